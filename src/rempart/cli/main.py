"""Entry point and lazy command registry (pip's model): ``--help`` imports nothing heavy.

Each command module defines ``add_parser(subparsers)`` and ``run(args, ctx) -> int``.
Errors derived from RempartError become one sentence on stderr (or JSON with ``--json``) and
the class's exit code.

Exit codes: 0 ok; 1 error; 2 usage or configuration; 3 backup finished but some sources could
not be read; 10 repository not found / machine not enrolled; 11 locked; 12 wrong passphrase;
20 integrity error; 30 backup looks attacked (detection alert); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from rempart import __version__
from rempart.core.errors import RempartError, local_error

#: command name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("rempart.cli.cmd_init", "create a repository and its recovery kit"),
    "backup": ("rempart.cli.cmd_backup", "back up files and folders"),
    "snapshots": ("rempart.cli.cmd_snapshots", "list snapshots"),
    "ls": ("rempart.cli.cmd_ls", "list the files of a snapshot (needs the kit)"),
    "diff": ("rempart.cli.cmd_diff", "show what changed between two snapshots (needs the kit)"),
    "restore": ("rempart.cli.cmd_restore", "restore a snapshot to a folder (needs the kit)"),
    "check": ("rempart.cli.cmd_check", "check the repository (--read-data needs the kit)"),
    "drill": ("rempart.cli.cmd_drill", "restore drill: read a snapshot back in full and record it (needs the kit)"),
    "forget": ("rempart.cli.cmd_forget", "apply a retention policy and collect garbage"),
    "mirror": ("rempart.cli.cmd_mirror", "copy the repository's objects into a folder (no key; from a vault: restore token)"),
    "unlock": ("rempart.cli.cmd_unlock", "remove expired repository locks"),
    "key": ("rempart.cli.cmd_key", "recovery kit commands"),
    "vault": ("rempart.cli.cmd_vault", "run and administer a vault server"),
    "enroll": ("rempart.cli.cmd_enroll", "enroll this machine with a vault"),
    "agent": ("rempart.cli.cmd_agent", "run the scheduled backup agent"),
    "status": ("rempart.cli.cmd_status", "one-line backup status for the practice"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rempart",
        description="Encrypted, deduplicated, ransomware-resilient backups.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 incomplete backup, 10 no repository, "
        "11 locked, 12 wrong passphrase, 20 integrity error, 30 suspicious backup.",
    )
    parser.add_argument("--version", action="version", version=f"rempart {__version__}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        mod = _command_module(module)
        if mod is None:  # registered, not shipped in this build: listed, refused when run
            sub.add_parser(name, help=f"{summary} (not available in this build)", add_help=False)
            continue
        cmd = sub.add_parser(name, help=summary, description=summary)
        _global_options(cmd, argparse.SUPPRESS)  # also accepted after the command name
        mod.add_parser(cmd)
    return parser


def _command_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def _global_options(p: argparse.ArgumentParser, default: object) -> None:
    kw: dict[str, Any] = {"default": default} if default is not None else {}
    bkw: dict[str, Any] = {"default": default} if default is not None else {"default": False}
    p.add_argument("-r", "--repo", help="repository: a folder or https://VAULT/PRACTICE (env REMPART_REPOSITORY)", **kw)
    p.add_argument("--state-dir", help="local state folder (env REMPART_STATE_DIR)", **kw)
    p.add_argument("--config", help="agent TOML config file (env REMPART_CONFIG)", **kw)
    p.add_argument("--json", action="store_true", help="machine-readable output", **bkw)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output", **bkw)


_FLAGS = {"--json", "-q", "--quiet"}


def _hoist_flags(argv: list[str]) -> list[str]:
    """Accept the argument-less global flags anywhere (also after nested sub-commands)."""
    if "--" in argv:
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut:]
    else:
        head, tail = argv, []
    flags = [a for a in head if a in _FLAGS]
    return flags + [a for a in head if a not in _FLAGS] + tail


def _command_name(argv: Sequence[str]) -> str | None:
    for a in argv:
        if a in COMMANDS:
            return a
    return None


def _return_large_buffers_to_the_system() -> None:
    """Pin glibc's mmap threshold at 1 MiB. By default glibc raises it after the first large
    buffer is freed (up to 32 MiB); from then on the pack buffers (10 MiB) and read buffers (1 MiB)
    come from the heap, whose pages are kept after ``free``, and peak memory grows by tens of
    MiB (docs/benchmarks.md, "Peak memory"). A no-op where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if argv is None and module_wants_fast_exit(sys.argv[1:]):
        _exit_now(code)
    return code


def module_wants_fast_exit(argv: Sequence[str]) -> bool:
    """Whether the command run as this process (``argv`` None: the ``rempart`` program, not a
    caller in the same process) asks to skip the interpreter's teardown (``FAST_EXIT`` in
    its module): tearing down ~250 modules costs ~45 ms CPU after a backup has finished."""
    name = _command_name(_hoist_flags(list(argv)))
    module = sys.modules.get(COMMANDS[name][0]) if name else None
    return bool(getattr(module, "FAST_EXIT", False))


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, once the output is flushed, and
    only when no other non-daemon thread runs (the teardown would wait for it)."""
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # let the normal exit report it
    os._exit(code)


def _tolerant_output() -> None:
    """Print a file name that is not UTF-8 on disk (Python holds its bytes as surrogates) as
    the bytes it has (POSIX) or escaped (elsewhere), instead of failing ``ls`` or ``diff`` on it
    where the terminal's encoding is strict (most UTF-8 locales)."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape" if os.name == "posix" else "backslashreplace")


def _main(argv: Sequence[str] | None) -> int:
    _return_large_buffers_to_the_system()
    _tolerant_output()
    args_list = _hoist_flags(list(sys.argv[1:] if argv is None else argv))
    name = _command_name(args_list)
    parser = build_parser(only=name)
    args, extra = parser.parse_known_args(args_list)
    module = _command_module(COMMANDS[args.command][0]) if args.command else None
    if args.command and module is None:
        print(f"rempart: error: the {args.command} command is not available in this build", file=sys.stderr)
        return 2
    intermixed = getattr(module, "INTERMIXED", None)
    if extra and intermixed and not any(e.startswith("-") for e in extra):
        getattr(args, intermixed).extend(extra)  # positionals given after options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command or module is None:
        parser.print_help()
        return 2
    from rempart.cli.context import Context

    ctx = Context.from_args(args)
    try:
        return int(module.run(args, ctx) or 0)
    except RempartError as exc:
        return _report(exc, args.json)
    except KeyboardInterrupt:
        print("rempart: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # not translated where it happened: still one sentence, no traceback
        return _report(local_error(str(exc.filename) if exc.filename else "a file on this machine", exc), args.json)


def _report(exc: RempartError, as_json: bool) -> int:
    if as_json:
        print(json.dumps(exc.to_dict()), file=sys.stderr)
    else:
        msg = f"rempart: error: {exc.message}"
        if exc.hint:
            msg += f"\n  hint: {exc.hint}"
        print(msg, file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""rempart backup PATH...: needs neither the kit nor a passphrase.

The engine is imported inside ``run``, after the metadata read-ahead has started: on a cold
cache the imports and the folder reads then overlap instead of adding up. The read-ahead also
lists a local repository's pack folders and asks the kernel for the files the previous run
opened first (its Python modules and databases, remembered in ``STARTUP_FILES``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rempart.snapshot.pipeline import MetadataReadAhead

if TYPE_CHECKING:
    from rempart.cli.context import Context
    from rempart.repository.repo import Repository


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="files and folders to back up")
    p.add_argument("--exclude", action="append", default=[], help="name pattern to skip (repeatable)")
    p.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable)")
    p.add_argument("--force-reread", action="store_true", help="read every file, trusting no cache")
    p.add_argument("--reread-days", type=float, default=7.0,
                   help="re-read files not read for this many days (default 7; 0 disables)")
    p.add_argument("--no-detect", action="store_true", help="skip ransomware detection")
    p.add_argument("--acknowledge-incident", action="store_true",
                   help="close an open detection incident first (after a false positive was confirmed, "
                        "or after the PC was cleaned and restored); backups are judged afresh")


#: cli/main.py ends the process at once after this command (see ``main``): a backup has
#: committed and closed everything by then, and the interpreter's teardown cost ~45 ms CPU
FAST_EXIT = True

#: in the state folder: files a backup reads at start-up, one path a line (a hint, rewritten
#: when it changes)
STARTUP_FILES = "startup-files.txt"
MAX_STARTUP_FILES = 2000


def run(args: argparse.Namespace, ctx: Context) -> int:
    read_ahead = MetadataReadAhead((Path(p).absolute() for p in args.paths), folders=_repo_folders(ctx.repo),
                                   files=_startup_files(ctx.state_dir)).start()
    try:
        code = _run(args, ctx)
    finally:
        read_ahead.stop()
    _remember_startup_files(ctx.state_dir)
    return code


def _repo_folders(repo: str | None) -> list[Path]:
    """A local repository's folders that opening it lists (storage/local.py's layout)."""
    if not repo or "://" in repo:
        return []
    return [Path(repo) / "data", Path(repo) / "index"]


def _startup_files(state_dir: Path) -> Iterator[str]:
    """The remembered list, read by the read-ahead thread."""
    try:
        text = (state_dir / STARTUP_FILES).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return
    yield from text.splitlines()[:MAX_STARTUP_FILES]


def _remember_startup_files(state_dir: Path) -> None:
    """The compiled modules and libraries this process loaded, and the state databases."""
    files = []
    for mod in list(sys.modules.values()):
        for path in (getattr(mod, "__cached__", None), getattr(mod, "__file__", None)):
            # the compiled module if there is one (the source is then only looked at), a library
            if isinstance(path, str) and path.endswith((".pyc", ".py", ".so", ".pyd")) and os.path.isfile(path):
                files.append(path)
                break
    files += sorted(str(p) for p in state_dir.glob("repos/*/*.sqlite"))
    text = "\n".join(files[:MAX_STARTUP_FILES]) + "\n"
    target = state_dir / STARTUP_FILES
    try:
        if target.read_text(encoding="utf-8", errors="surrogateescape") == text:
            return
    except OSError:
        pass
    try:
        tmp = target.with_name(f".{STARTUP_FILES}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, target)
    except OSError:
        pass  # a hint only


def _run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.cli.common import open_repo

    repo = open_repo(ctx)
    try:
        return _backup(args, ctx, repo)
    finally:
        repo.close()  # the index cache's database, checkpointed and closed


def _backup(args: argparse.Namespace, ctx: Context, repo: Repository) -> int:
    from rempart.agent.backup import run_backup
    from rempart.agent.credentials import load_credential
    from rempart.cli.common import human_bytes, print_json, progress_line, silent
    from rempart.repository.locks import LockPolicy
    from rempart.snapshot.options import BackupOptions

    cred = load_credential(ctx.state_dir, repo.config.id)
    options = BackupOptions(
        excludes=tuple(args.exclude),
        force_reread=args.force_reread,
        reread_after=args.reread_days * 86400 if args.reread_days > 0 else None,
    )
    detection = None
    if not args.no_detect:
        from rempart.agent.detection import make_detection

        detection = make_detection(ctx.state_dir, repo.config.id)
        if args.acknowledge_incident:
            from rempart.agent.credentials import repo_state_dir
            from rempart.snapshot.cache import StateCache

            cache = StateCache(repo_state_dir(ctx.state_dir, repo.config.id))
            try:
                if detection.acknowledge(cache):
                    ctx.print("incident acknowledged: damage history cleared")
            finally:
                cache.close()
        elif (ctx.repo or "").lower().startswith(("https://", "http://")):
            from rempart.agent.incident import sync_incident, vault_status_of

            status = vault_status_of(repo.backend)  # an admin released the incident at the vault?
            if status is not None and sync_incident(detection, ctx.state_dir, repo.config.id, status):
                print("the vault released the incident: damage history cleared", file=sys.stderr)
    with progress_line(ctx, "backing up") as show:
        result = run_backup(
            repo, cred, [Path(p) for p in args.paths], ctx.state_dir, ctx.clock,
            options=options, detection=detection, tags=args.tag, lock_policy=LockPolicy.from_env(ctx.env),
            progress=None if show is silent else lambda s: show(f"{s.files} files, {human_bytes(s.bytes_read)} read"),
        )
    for n in result.notices:
        print(f"note: {n}", file=sys.stderr)
    for w in result.stats.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.stats.warnings_dropped:
        print(f"warning: ... and {result.stats.warnings_dropped} more", file=sys.stderr)
    if ctx.json:
        print_json({
            "snapshot": result.snapshot,
            "stats": result.stats.to_dict(),
            "storage": result.session_stats,
            "detection": result.detection,
            "notices": result.notices,
        })
    else:
        s, st = result.stats, result.session_stats
        # read again with the same content (a periodic full read, a touched file, lost blobs)
        same = s.files_read - s.files_new - s.files_changed
        again = f", {same} read again, same content" if same > 0 else ""
        ctx.print(f"snapshot {result.snapshot[:8]} saved: {s.files} files ({s.files_new} new, "
                  f"{s.files_changed} changed, {s.files_unchanged} unchanged{again}), {human_bytes(s.bytes)}; "
                  f"uploaded {human_bytes(st['bytes_stored'])} in {st['packs']} packs")
        if result.suspicious:
            ctx.print(f"ALERT: this backup looks attacked ({result.detection.get('summary', 'see snapshots')})")
    if result.suspicious:
        return 30
    return 3 if result.stats.warnings else 0

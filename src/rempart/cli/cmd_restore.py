"""rempart restore SNAPSHOT|latest --target DIR --kit FILE [PATH...].

The recovery kit is unlocked first, before the repository, snapshot and storage code is even
imported and before the index is loaded: the kit's key derivation takes 64 MiB on purpose
(memory-hard) for ~0.2 s and is the peak of a restore's memory, so as little as possible sits
beside it (``cli/kitfile.py``). A wrong passphrase is reported at once; a wrong repository
only after the passphrase.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from rempart.cli.context import Context
from rempart.cli.kitfile import load_kit
from rempart.core.errors import UserError

if TYPE_CHECKING:
    from rempart.snapshot.tree import Node

INTERMIXED = "items"


def add_parser(p: argparse.ArgumentParser) -> None:
    # one positional list (argparse cannot place a second one after options): SNAPSHOT [PATH...]
    p.add_argument("items", nargs="*", metavar="SNAPSHOT [PATH ...]",
                   help="snapshot id (or prefix) or 'latest', then optional paths to restore (as `ls` shows them)")
    p.add_argument("--target", required=True, help="folder to restore into (created if needed)")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")
    p.add_argument("--last-clean", action="store_true",
                   help="restore the newest snapshot taken before the damage began (give no SNAPSHOT)")
    p.add_argument("--per-file", action="store_true",
                   help="after an attack: latest snapshot, but every damaged or deleted file from its own "
                        "last good version (give no SNAPSHOT)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    auto = args.last_clean or args.per_file
    if args.last_clean and args.per_file:
        raise UserError("choose --last-clean or --per-file, not both")
    if auto:
        args.snapshot, args.paths = None, args.items
    elif not args.items:
        raise UserError("name the snapshot to restore ('latest', an id), or use --last-clean / --per-file")
    else:
        args.snapshot, args.paths = args.items[0], args.items[1:]
    kit = load_kit(ctx, args.kit)  # first: see the module's docstring
    from rempart.cli.common import (
        human_bytes,
        open_repo,
        print_json,
        progress_line,
        read_session,
        resolve_snapshot,
        warn_damaged,
    )
    from rempart.snapshot.recovery import last_clean, plan_per_file, timeline
    from rempart.snapshot.restorer import Restorer

    repo = open_repo(ctx)
    session = read_session(ctx, repo, kit)
    repo.load_index()
    extra: dict[PurePosixPath, Node] = {}
    report: dict[str, object] = {}
    damaged: list[str] = []
    if args.per_file:
        plan = plan_per_file(repo, session, timeline(repo, damaged))
        name, extra = plan.base.name, {p: n for p, (_, n) in plan.replaced.items()}
        report = {"clean_point": plan.clean.name, "replaced": len(plan.replaced),
                  "dropped": [str(p) for p in plan.dropped]}
    elif args.last_clean:
        name = last_clean(timeline(repo, damaged))[0].name
        report = {"clean_point": name}
    else:
        name = resolve_snapshot(repo, args.snapshot)
    warn_damaged(damaged)
    snap, _ = repo.load_snapshot(name)
    include = [_posix(p) for p in args.paths] or None
    with progress_line(ctx, "restoring") as show:
        restorer = Restorer(session, progress=lambda s: show(f"{s.files} files, {human_bytes(s.bytes)}"))
        stats = restorer.restore(
            snap.tree, Path(args.target), include, exclude=set(extra) | {PurePosixPath(p) for p in
                                                                         report.get("dropped", [])},  # type: ignore[attr-defined]
            extra=extra,
        )
    missing = [str(p) for p in include or () if p not in restorer.matched]
    if missing and len(missing) == len(include or ()):
        raise UserError(f"nothing in snapshot {name[:8]} matches {', '.join(missing)}",
                        hint=f"paths as `rempart ls {name[:8]}` shows them")
    for p in missing:
        print(f"warning: nothing in snapshot {name[:8]} matches {p}", file=sys.stderr)
    if ctx.json:
        print_json({"snapshot": name, "files": stats.files, "dirs": stats.dirs,
                    "symlinks": stats.symlinks, "bytes": stats.bytes, **report})
    else:
        if "clean_point" in report:
            ctx.print(f"clean point: snapshot {str(report['clean_point'])[:8]}")
        if args.per_file:
            ctx.print(f"{report['replaced']} damaged or deleted file(s) taken from before the damage; "
                      f"{len(report['dropped'])} file(s) created by the attack left out")  # type: ignore[arg-type]
        ctx.print(f"restored snapshot {name[:8]}: {stats.files} files, {stats.dirs} folders, "
                  f"{human_bytes(stats.bytes)} into {args.target}")
    return 0


def _posix(p: str) -> PurePosixPath:
    path = PurePosixPath("/" + p.replace("\\", "/").lstrip("/"))
    if ".." in path.parts:
        raise UserError(f"{p}: '..' is not allowed in a restore path")
    return path


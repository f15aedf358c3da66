"""rempart restore SNAPSHOT|latest --target DIR --kit FILE [PATH...]."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

from rempart.cli.common import human_bytes, open_repo, print_json, progress_line, read_session, resolve_snapshot
from rempart.cli.context import Context
from rempart.core.errors import UserError
from rempart.snapshot.restorer import Restorer


INTERMIXED = "items"


def add_parser(p: argparse.ArgumentParser) -> None:
    # one positional list (argparse cannot place a second one after options): SNAPSHOT [PATH...]
    p.add_argument("items", nargs="+", metavar="SNAPSHOT [PATH ...]",
                   help="snapshot id (or prefix) or 'latest', then optional paths to restore (as `ls` shows them)")
    p.add_argument("--target", required=True, help="folder to restore into (created if needed)")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    args.snapshot, args.paths = args.items[0], args.items[1:]
    repo = open_repo(ctx)
    session = read_session(ctx, repo, args.kit)
    name = resolve_snapshot(repo, args.snapshot)
    snap, _ = repo.load_snapshot(name)
    repo.load_index()
    include = [_posix(p) for p in args.paths] or None
    with progress_line(ctx, "restoring") as show:
        stats = Restorer(session, progress=lambda s: show(f"{s.files} files, {human_bytes(s.bytes)}")).restore(
            snap.tree, Path(args.target), include
        )
    if ctx.json:
        print_json({"snapshot": name, "files": stats.files, "dirs": stats.dirs,
                    "symlinks": stats.symlinks, "bytes": stats.bytes})
    else:
        ctx.print(f"restored snapshot {name[:8]}: {stats.files} files, {stats.dirs} folders, "
                  f"{human_bytes(stats.bytes)} into {args.target}")
    return 0


def _posix(p: str) -> PurePosixPath:
    path = PurePosixPath("/" + p.replace("\\", "/").lstrip("/"))
    if ".." in path.parts:
        raise UserError(f"{p}: '..' is not allowed in a restore path")
    return path

"""rempart ls SNAPSHOT --kit FILE: list the files of a snapshot."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from rempart.cli.common import open_repo, read_session, resolve_snapshot
from rempart.cli.context import Context
from rempart.snapshot.restorer import TreeReader


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot", help="snapshot id (or prefix), or 'latest'")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")
    p.add_argument("-l", "--long", action="store_true", help="show mode, size and time")


def run(args: argparse.Namespace, ctx: Context) -> int:
    import json

    repo = open_repo(ctx)
    session = read_session(ctx, repo, args.kit)
    name = resolve_snapshot(repo, args.snapshot)
    snap, _ = repo.load_snapshot(name)
    repo.load_index()
    out = sys.stdout
    for path, node in TreeReader(session).walk(snap.tree):
        if ctx.json:
            out.write(json.dumps({"path": str(path), "type": node.type, "size": node.size, "mode": node.mode,
                                  "mtime_ns": node.mtime_ns, "target": node.target}) + "\n")
        elif args.long:
            t = datetime.fromtimestamp(node.mtime_ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"{oct(node.mode & 0o7777)[2:]:>5} {node.type:7} {node.size:>12} {t}  {path}\n")
        else:
            out.write(f"{path}\n")
    return 0

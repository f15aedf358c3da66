"""rempart diff A B --kit FILE: added (+), removed (-), modified (M), metadata (U)."""

from __future__ import annotations

import argparse

from rempart.cli.common import open_repo, print_json, read_session, resolve_snapshot
from rempart.cli.context import Context
from rempart.snapshot.diff import diff_trees
from rempart.snapshot.restorer import TreeReader


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("first", help="older snapshot")
    p.add_argument("second", help="newer snapshot (or 'latest')")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = open_repo(ctx)
    session = read_session(ctx, repo, args.kit)
    a, _ = repo.load_snapshot(resolve_snapshot(repo, args.first))
    b, _ = repo.load_snapshot(resolve_snapshot(repo, args.second))
    repo.load_index()
    changes = list(diff_trees(TreeReader(session), a.tree, b.tree))
    if ctx.json:
        print_json([{"change": c.kind, "path": c.path} for c in changes])
    else:
        for c in changes:
            print(f"{c.kind}  {c.path}")
        counts = {k: sum(1 for c in changes if c.kind == k) for k in "+-MU"}
        print(f"added {counts['+']}, removed {counts['-']}, modified {counts['M']}, metadata {counts['U']}")
    return 0

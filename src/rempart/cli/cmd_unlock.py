"""rempart unlock: remove repository locks that no longer protect anything.

Without flags it removes the files of expired locks (not refreshed within their lifetime), of
locks whose process ended on this computer, of released locks (a backup whose credential could
not delete its own lock records its release instead) and release records left alone. Live locks
stay and are listed. ``--remove-all`` removes every lock file, live or unreadable: only for an
operator who knows that no backup and no prune is running on any computer. Needs no key; a
vault keeps no locks (it collects garbage itself).
"""

from __future__ import annotations

import argparse
import sys

from rempart.cli.common import open_repo, print_json
from rempart.cli.context import Context
from rempart.core.errors import UserError
from rempart.repository.locks import Owner, remove_locks


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remove-all", action="store_true",
                   help="remove every lock, also live and unreadable ones (only when nothing runs anywhere)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    location = ctx.require_repo()
    if location.lower().startswith(("https://", "http://")):
        raise UserError("a vault keeps no repository locks: it collects garbage itself, under its own lock")
    repo = open_repo(ctx)
    try:
        now = ctx.clock.now().timestamp()
        me = Owner.current(repo.config.id)
        out = remove_locks(repo.backend, now, me, remove_all=args.remove_all)
    finally:
        repo.close()
    if ctx.json:
        print_json({"removed": out.removed, "refused": out.refused,
                    "remaining": [{"id": s.lock_id, "kind": s.kind, "description": s.describe(now, me)}
                                  for s in out.remaining],
                    "unreadable": out.corrupt})
    else:
        ctx.print(f"removed {len(out.removed)} lock file(s)")
        for s in out.remaining:
            ctx.print(f"  kept: {s.describe(now, me)}")
        if out.remaining:
            ctx.print("a live lock belongs to a process still running (or paused); it expires by itself "
                      "when no longer refreshed. --remove-all removes it: only if you are sure nothing runs")
    for name in out.refused:
        print(f"warning: the storage refused to delete locks/{name[:16]}... (retention lock?)", file=sys.stderr)
    for name, why in sorted(out.corrupt.items()):
        print(f"warning: lock file locks/{name[:16]}... cannot be used ({why}); it blocks backups and prunes: "
              "remove it with --remove-all if nothing runs", file=sys.stderr)
    return 1 if out.refused or out.corrupt else 0

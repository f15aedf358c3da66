"""rempart forget: apply a retention policy (restic's flags), optionally collect garbage (--prune).

Needs no key: it reads only the plain parts of the format (each snapshot's time, verdict and list
of referenced blob ids; each pack's plain header), like the vault. Snapshots that detection
flagged suspicious never count towards --keep-last or the --keep-hourly.. --keep-yearly buckets,
so a burst of garbage backups cannot push the good ones out. For a vault repository the vault
applies its own policy (``rempart vault practice policy``): this command refuses it.

Write order and crash safety: see ``rempart.repository.prune`` and docs/design.md. With --prune
(not a dry run) the command first takes the repository's exclusive lock
(``rempart.repository.locks``) and refuses, changing nothing, while a backup or another prune
holds a live lock; it keeps the lock until the last deletion.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rempart.cli.common import human_bytes, open_repo, print_json, progress_line
from rempart.cli.context import Context
from rempart.core.errors import IntegrityError, PermissionDenied, UserError
from rempart.repository.lock_holder import RepoLock
from rempart.repository.locks import PRUNE, LockPolicy, Owner, remove_locks
from rempart.repository.prune import (
    PrunePlan,
    PruneResult,
    SnapshotInfo,
    execute_prune,
    load_snapshots,
    plan_prune,
    remove_snapshots,
)
from rempart.repository.retention import Duration, KeepPolicy, SnapRecord, keep_reasons

INTERMIXED = "snapshots"
_BUCKETS = {"hourly": "hours", "daily": "days", "weekly": "weeks", "monthly": "months", "yearly": "years"}


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:20]!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                   help="forget these snapshots (ids or unique prefixes of 4+ characters) instead of a policy")
    p.add_argument("--keep-last", type=_count, default=0, metavar="N", help="keep the N newest clean snapshots")
    for b, unit in _BUCKETS.items():
        p.add_argument(f"--keep-{b}", type=_count, default=0, metavar="N",
                       help=f"keep the newest clean snapshot of each of the last N {unit} that have one")
    p.add_argument("--keep-within", metavar="DURATION",
                   help="keep every snapshot within DURATION of the newest one (e.g. 7d, 2w, 1y6m, 36h)")
    p.add_argument("--min-age", metavar="DURATION",
                   help="never forget a snapshot younger than DURATION (against this machine's clock)")
    p.add_argument("--prune", action="store_true",
                   help="then delete the packs no remaining snapshot references (alone: only collect garbage)")
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would be removed; change nothing")
    p.add_argument("--allow-forget-all", action="store_true",
                   help="allow removing every snapshot of the repository (refused otherwise)")


def _policy(args: argparse.Namespace, now: float) -> KeepPolicy:
    within = Duration.parse(args.keep_within) if args.keep_within else Duration()
    age = Duration.parse(args.min_age) if args.min_age else Duration()
    return KeepPolicy(last=args.keep_last, within=within, min_age=now - age.before(now) if age else 0.0,
                      **{b: getattr(args, f"keep_{b}") for b in _BUCKETS})


def _resolve(refs: list[str], names: list[str]) -> list[str]:
    out: list[str] = []
    for ref in refs:
        r = ref.strip().lower()
        if len(r) < 4:
            raise UserError(f"give at least 4 characters of the snapshot id ({ref[:64]!r} is too short)")
        matches = [n for n in names if n.startswith(r)]
        if len(matches) != 1:
            raise UserError(f"no unique snapshot matches {ref[:64]!r} ({len(matches)} found); nothing was removed")
        if matches[0] not in out:
            out.append(matches[0])
    return out


def _decide(args: argparse.Namespace, snaps: list[SnapshotInfo], damaged: list[str],
            policy: KeepPolicy, now: float) -> tuple[dict[str, list[str]], list[str]]:
    """(reasons per kept snapshot, names to remove)."""
    names = [s.name for s in snaps]
    if args.snapshots:
        remove = _resolve(args.snapshots, names + damaged)
        return {n: ["not named"] for n in names + damaged if n not in remove}, remove
    if policy.keeps_nothing():
        return {n: ["no policy"] for n in names + damaged}, []
    dated = [SnapRecord(s.name, s.time, s.suspicious) for s in snaps if s.time is not None]
    reasons = keep_reasons(dated, policy, now)
    for s in snaps:
        if s.time is None:
            reasons[s.name] = ["undated"]  # never forget what cannot be placed in time
    for n in damaged:
        reasons[n] = ["unreadable"]
    oldest_first = sorted(snaps, key=lambda s: (s.time or 0.0, s.name))
    return reasons, [s.name for s in oldest_first if s.name not in reasons]


def _row(s: SnapshotInfo | None, name: str, reasons: list[str] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": name, "short_id": name[:8], "time": s.iso if s else None,
                           "verdict": ("suspicious" if s.suspicious else "clean") if s else "unreadable"}
    if reasons is not None:
        row["reasons"] = reasons
    return row


def _prune_dict(plan: PrunePlan, res: PruneResult | None) -> dict[str, Any]:
    return {
        "packs_total": plan.packs_total,
        "packs_removed": res.removed_packs if res else [fi.name for fi in plan.remove_packs],
        "bytes_freed": res.bytes_freed if res else plan.bytes_freed,
        "index_removed": res.removed_index if res else sorted(plan.remove_index),
        "index_written": res.new_index if res else None,
        "index_to_write": bool(plan.reindex),
        "unreadable_packs": plan.unreadable_packs,
        "refused": res.refused if res else [],
        "new_snapshots": res.newcomers if res else [],
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    location = ctx.require_repo()
    if location.lower().startswith(("https://", "http://")):
        raise UserError("a vault applies its own retention policy and collects garbage itself; "
                        "forget works on repositories opened directly (a folder)",
                        hint="set the practice's policy on the vault: rempart vault practice policy NAME ...")
    now = ctx.clock.now().timestamp()
    policy = _policy(args, now)
    if args.snapshots and not policy.keeps_nothing():
        raise UserError("give either snapshot ids or a --keep-* policy, not both")
    if not args.snapshots and policy.keeps_nothing() and not args.prune:
        raise UserError("no policy given: nothing to forget",
                        hint="pass --keep-last N, --keep-daily N, ... or --keep-within DURATION (or --prune alone)")
    lock_policy = LockPolicy.from_env(ctx.env)
    repo = open_repo(ctx)
    lock: RepoLock | None = None
    locks_removed = 0
    try:
        if args.prune and not args.dry_run:  # before the snapshots are listed: see module docstring
            lock = RepoLock(repo.backend, PRUNE, Owner.current(repo.config.id), ctx.clock, lock_policy).take()
        snaps, damaged = load_snapshots(repo)
        reasons, remove = _decide(args, snaps, damaged, policy, now)
        if remove and not reasons and not args.allow_forget_all:
            raise UserError(f"this would remove all {len(remove)} snapshots of the repository; nothing was removed",
                            hint="check the policy, or pass --allow-forget-all if that is really meant")
        plan = None
        if args.prune:
            if damaged:
                raise IntegrityError(f"{len(damaged)} snapshot file(s) cannot be read, so what they reference is "
                                     "unknown; nothing was removed", hint="run 'rempart check' first")
            gone = set(remove)
            plan = plan_prune(repo, [s for s in snaps if s.name not in gone])
        result = None
        removed: list[str] = []
        if not args.dry_run:
            try:
                remove_snapshots(repo, remove, removed.append)
            except PermissionDenied as exc:
                raise PermissionDenied(
                    f"the storage refused to delete a snapshot ({exc.message}); {len(removed)} of "
                    f"{len(remove)} snapshot(s) were removed before, nothing more was removed",
                    hint="forget needs a credential allowed to delete (a backup agent's may only add)") from exc
            if plan is not None and lock is not None:
                with progress_line(ctx, "pruning") as show:
                    known = {s.name for s in snaps} | set(damaged)
                    result = execute_prune(repo, plan, known,
                                           lambda n: show(f"{n}/{len(plan.remove_packs)} packs"), lock.check)
                # expired and released locks of earlier runs (an agent may not delete its own)
                locks_removed = len(remove_locks(repo.backend, ctx.clock.now().timestamp(), lock.owner,
                                                 keep=lock.lock_id).removed)
    finally:
        if lock is not None:
            lock.release()
        repo.close()
    by_name = {s.name: s for s in snaps}
    kept_rows = sorted((_row(by_name.get(n), n, r) for n, r in reasons.items()), key=lambda r: str(r["time"]))
    gone_rows = sorted((_row(by_name.get(n), n) for n in remove), key=lambda r: str(r["time"]))
    if ctx.json:
        print_json({"dry_run": args.dry_run, "policy": policy.to_dict(), "keep": kept_rows, "remove": gone_rows,
                    "removed": removed, "prune": _prune_dict(plan, result) if plan is not None else None,
                    "locks_removed": locks_removed})
    else:
        _print_text(ctx, args.dry_run, kept_rows, gone_rows, plan, result)
    return 1 if result is not None and (result.refused or result.newcomers) else 0


def _print_text(ctx: Context, dry: bool, kept: list[dict[str, Any]], gone: list[dict[str, Any]],
                plan: PrunePlan | None, res: PruneResult | None) -> None:
    def table(rows: list[dict[str, Any]], reasons: bool) -> None:
        for r in rows:
            t = str(r["time"] or "?")[:19].replace("T", " ")
            extra = f"  {', '.join(r['reasons'])}" if reasons else ""
            ctx.print(f"  {r['short_id']:8}  {t:19}  {r['verdict']:10}{extra}")

    would = "would " if dry else ""
    ctx.print(f"keep {len(kept)} snapshot(s):")
    table(kept, True)
    ctx.print(f"{would}remove {len(gone)} snapshot(s)" + (":" if gone else ""))
    table(gone, False)
    if plan is not None:
        n, size = len(plan.remove_packs), human_bytes(plan.bytes_freed)
        if res is None:
            ctx.print(f"prune: {would}remove {n} of {plan.packs_total} packs ({size}) and "
                      f"{len(plan.remove_index)} index file(s)")
        else:
            ctx.print(f"prune: removed {len(res.removed_packs)} of {plan.packs_total} packs "
                      f"({human_bytes(res.bytes_freed)}) and {len(res.removed_index)} index file(s)"
                      + (f"; wrote index {res.new_index[:8]}" if res.new_index else ""))
            if res.newcomers:
                print(f"warning: {len(res.newcomers)} snapshot(s) appeared while pruning (a backup ran?): no pack "
                      "was deleted; run 'rempart forget --prune' again when no backup is running", file=sys.stderr)
            for name in res.refused:
                print(f"warning: the storage refused to delete {name[:20]}; it stays (retention lock?)",
                      file=sys.stderr)
        if plan.unreadable_packs:
            print(f"warning: {len(plan.unreadable_packs)} pack(s) could not be read and were kept; "
                  "run 'rempart check'", file=sys.stderr)

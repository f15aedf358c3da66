"""rempart snapshots: list snapshots from their plain parts (no kit needed)."""

from __future__ import annotations

import argparse

from rempart.cli.common import human_bytes, open_repo, print_json, warn_damaged
from rempart.cli.context import Context


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latest", type=int, default=0, help="show only the N newest")


def _num(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = open_repo(ctx)
    rows = []
    damaged: list[str] = []
    for name, snap in repo.list_snapshots(damaged):
        stats = snap.plain.get("stats") or {}
        det = snap.plain.get("detection") or {}
        rows.append({
            "id": name,
            "short_id": name[:8],
            "time": snap.plain.get("time"),
            "parent": snap.plain.get("parent"),
            "tree": snap.plain.get("tree"),
            "host": snap.plain.get("host"),
            "files": stats.get("files") if isinstance(stats, dict) else None,
            "bytes": stats.get("bytes") if isinstance(stats, dict) else None,
            "verdict": det.get("verdict", "unknown") if isinstance(det, dict) else "unknown",
            "detection": det,
            "blobs": len(snap.refs),
        })
    rows.sort(key=lambda r: str(r["time"]))
    warn_damaged(damaged)
    if args.latest:
        rows = rows[-args.latest :]
    if ctx.json:
        print_json(rows)
        return 0
    if not rows:
        print("no snapshots")
        return 0
    print(f"{'ID':8}  {'time (UTC)':20}  {'files':>8}  {'size':>10}  verdict")
    for r in rows:
        t = str(r["time"])[:19].replace("T", " ")
        print(f"{r['short_id']:8}  {t:20}  {r['files'] or 0:>8}  {human_bytes(_num(r['bytes'])):>10}  {r['verdict']}")
    print(f"{len(rows)} snapshot(s)")
    return 0

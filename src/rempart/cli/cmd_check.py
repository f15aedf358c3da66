"""rempart check [--read-data --kit FILE]: exit 20 when anything is damaged."""

from __future__ import annotations

import argparse

from rempart.cli.common import human_bytes, open_repo, print_json, progress_line, read_session
from rempart.cli.context import Context
from rempart.repository.checker import CheckReport, check_data, check_structure


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--read-data", action="store_true", help="read, decrypt and verify every blob (needs the kit)")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = open_repo(ctx)
    report = CheckReport()
    session = read_session(ctx, repo, args.kit) if args.read_data else None
    with progress_line(ctx, "checking") as show:
        repo.index = check_structure(repo, report)
        if session is not None:
            check_data(session, report, progress=lambda n: show(f"{human_bytes(n)} verified"))
    if ctx.json:
        print_json({"ok": report.ok, "packs": report.packs, "blobs": report.blobs, "snapshots": report.snapshots,
                    "bytes_read": report.bytes_read, "errors": report.errors})
    else:
        for e in report.errors:
            print(f"error: {e}")
        what = "structure and data" if session else "structure"
        verdict = "no errors found" if report.ok else f"{len(report.errors)} error(s) found"
        print(f"checked {what}: {report.snapshots} snapshots, {report.packs} packs, {report.blobs} blobs: {verdict}")
    return 0 if report.ok else 20

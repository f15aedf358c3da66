"""rempart backup PATH...: needs neither the kit nor a passphrase.

The engine is imported inside ``run``, after the metadata read-ahead has started: on a cold
cache the imports and the folder reads then overlap instead of adding up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rempart.snapshot.pipeline import MetadataReadAhead

if TYPE_CHECKING:
    from rempart.cli.context import Context


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


def run(args: argparse.Namespace, ctx: Context) -> int:
    read_ahead = MetadataReadAhead(Path(p).absolute() for p in args.paths).start()
    try:
        return _run(args, ctx)
    finally:
        read_ahead.stop()


def _run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.agent.backup import run_backup
    from rempart.agent.credentials import load_credential
    from rempart.cli.common import human_bytes, open_repo, print_json, progress_line
    from rempart.snapshot.archiver import BackupOptions

    repo = open_repo(ctx)
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
            options=options, detection=detection, tags=args.tag,
            progress=lambda s: show(f"{s.files} files, {human_bytes(s.bytes_read)} read"),
        )
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
        })
    else:
        s, st = result.stats, result.session_stats
        ctx.print(f"snapshot {result.snapshot[:8]} saved: {s.files} files ({s.files_new} new, "
                  f"{s.files_changed} changed, {s.files_unchanged} unchanged), {human_bytes(s.bytes)}; "
                  f"uploaded {human_bytes(st['bytes_stored'])} in {st['packs']} packs")
        if result.suspicious:
            ctx.print(f"ALERT: this backup looks attacked ({result.detection.get('summary', 'see snapshots')})")
    if result.suspicious:
        return 30
    return 3 if result.stats.warnings else 0

"""rempart drill [SNAPSHOT|latest] --kit FILE [--scratch DIR] [--keep] [--no-report]: a restore drill.

Proves that a snapshot can be read back, the way a restore onto a wiped machine would: the
whole snapshot is restored into a new folder under ``--scratch`` (every blob decrypted and
authenticated on the way), the restored copy is counted on disk and compared with what the
snapshot's trees hold, then removed. With ``latest`` (the default), a damaged snapshot file
anywhere in the repository also fails the drill: that restore point is lost.

When the repository is a vault, the outcome is recorded there (``POST /v1/p/PRACTICE/drills``,
a restore token: a backup token cannot read backups back, so it cannot report a drill): the
weekly report and the dashboard show the last drill, and a failed one opens an alert until a
later drill passes. Only what the vault may know is sent: snapshot id, file count, bytes,
seconds and an error class; never a path.

What counts as a failed drill: data that cannot be read back (damaged or missing objects, a
snapshot that does not decrypt, a restored copy that differs from its snapshot, no snapshot at
all). A drill that could not run (wrong passphrase, kit of another repository, vault
unreachable, the scratch disk full) is an error of this run, reported by its exit code, and
recorded nowhere.

Run it on the IT provider's machine that holds the recovery kit, never on the practice PC (the
agent must hold no key that can read backups); a monthly timer is in docs/watch.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from rempart.cli.context import Context
from rempart.cli.kitfile import load_kit
from rempart.core.errors import (
    DecryptionError,
    IntegrityError,
    MissingBlobs,
    NotFound,
    RempartError,
    UserError,
)

#: errors that mean "this backup cannot be read back": the drill failed (and says so to the vault)
DATA_FAILURES = (IntegrityError, DecryptionError, NotFound, MissingBlobs)


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot", nargs="?", default="latest", help="snapshot id (or prefix), or 'latest' (default)")
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")
    p.add_argument("--scratch", help="folder to restore into (a new subfolder, removed afterwards; default: the "
                                     "system's temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the restored copy (its folder is printed)")
    p.add_argument("--no-report", action="store_true", help="do not record the outcome in the vault")


class NoSnapshot(UserError):
    """The repository holds no snapshot: there is nothing a restore could bring back."""


def run(args: argparse.Namespace, ctx: Context) -> int:
    kit = load_kit(ctx, args.kit)  # first, as for a restore (cmd_restore: memory peak)
    from rempart.cli.common import human_bytes, open_repo, progress_line, read_session
    from rempart.snapshot.restorer import Restorer

    scratch = Path(args.scratch) if args.scratch else Path(tempfile.gettempdir())
    if not scratch.is_dir():
        raise UserError(f"the scratch folder {scratch} does not exist")
    repo = open_repo(ctx)
    session = read_session(ctx, repo, kit)
    vault = None if args.no_report else _vault_of(repo.backend)
    started = ctx.clock.monotonic()
    name: str | None = None
    target: Path | None = None
    try:
        repo.load_index()
        name = _pick(repo, args.snapshot)
        snap, _ = repo.load_snapshot(name)
        want = _tree_totals(session, snap.tree)
        target = Path(tempfile.mkdtemp(prefix="rempart-drill-", dir=scratch))
        with progress_line(ctx, "drill") as show:
            stats = Restorer(session, progress=lambda s: show(f"{s.files} files, {human_bytes(s.bytes)}")).restore(
                snap.tree, target)
        got = _on_disk(target)
        if not (want == (stats.files, stats.bytes) == got):
            raise IntegrityError(f"the restored copy holds {got[0]} files ({got[1]} bytes); snapshot {name[:8]} "
                                 f"holds {want[0]} files ({want[1]} bytes)")
    except (*DATA_FAILURES, NoSnapshot) as exc:
        _report(ctx, vault, "failed", name, None, ctx.clock.monotonic() - started, type(exc).__name__)
        raise
    finally:
        if target is not None and not args.keep:
            shutil.rmtree(target, ignore_errors=True)
    seconds = ctx.clock.monotonic() - started
    recorded = _report(ctx, vault, "ok", name, stats, seconds, None)
    if ctx.json:
        from rempart.cli.common import print_json

        print_json({"snapshot": name, "outcome": "ok", "files": stats.files, "bytes": stats.bytes,
                    "seconds": round(seconds, 3), "recorded": recorded, "kept": str(target) if args.keep else None})
    else:
        rate = stats.bytes / seconds / 2**20 if seconds > 0 else 0.0
        ctx.print(f"restore drill of snapshot {name[:8]}: passed, {stats.files} files, {human_bytes(stats.bytes)} "
                  f"read back and checked in {seconds:.1f} s ({rate:.1f} MiB/s)"
                  + ("; recorded in the vault" if recorded else ""))
        if args.keep:
            ctx.print(f"restored copy kept in {target}")
    return 0


def _pick(repo: Any, ref: str) -> str:
    """The snapshot to drill. ``latest``: the newest, and every snapshot file must be readable."""
    if ref != "latest":
        from rempart.cli.common import resolve_snapshot

        return resolve_snapshot(repo, ref)
    damaged: list[str] = []
    snaps = sorted(repo.list_snapshots(damaged), key=lambda s: str(s[1].plain.get("time", "")))
    if damaged:
        raise IntegrityError(f"{len(damaged)} snapshot file(s) cannot be read: " +
                             ", ".join(n[:8] for n in damaged[:10]),
                             hint="`rempart check` tells what is damaged")
    if not snaps:
        raise NoSnapshot("the repository has no snapshot: there is nothing to restore")
    return str(snaps[-1][0])


def _tree_totals(session: Any, tree: bytes) -> tuple[int, int]:
    """Files and bytes the snapshot's trees hold (what a full restore must write)."""
    from rempart.snapshot.restorer import TreeReader
    from rempart.snapshot.tree import KIND_FILE

    files = size = 0
    for _, node in TreeReader(session).walk(tree):
        if node.type == KIND_FILE:
            files += 1
            size += node.size
    return files, size


def _on_disk(root: Path) -> tuple[int, int]:
    """Regular files and their bytes under ``root``, as the file system reports them."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for n in names:  # (symlinks, folders and special files are not regular files)
            st = os.lstat(os.path.join(folder, n))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def _vault_of(backend: Any) -> Any:
    """The vault client under the backend's wrappers, or None for other storage."""
    while backend is not None:
        if hasattr(backend, "report_drill"):
            return backend
        backend = getattr(backend, "inner", None)
    return None


def _report(ctx: Context, vault: Any, outcome: str, name: str | None, stats: Any, seconds: float,
            error_class: str | None) -> bool:
    """Record the drill in the vault; True if recorded. A failed drill's own error stays the one
    raised (a reporting error is only printed); a passed drill that cannot be recorded is an
    error of this run (the weekly report would otherwise say no drill was done)."""
    if vault is None:
        return False
    try:
        vault.report_drill(outcome, snapshot=name, files=stats.files if stats else None,
                           nbytes=stats.bytes if stats else None, seconds=round(seconds, 3), error_class=error_class)
    except RempartError as exc:
        if outcome == "ok":
            raise
        print(f"warning: the failed drill could not be recorded in the vault: {exc.message}", file=sys.stderr)
        return False
    if outcome != "ok":
        print("restore drill failed; recorded in the vault (a 'drill' alert opens)", file=sys.stderr)
    return True

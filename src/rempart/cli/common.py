"""Helpers shared by commands: open the repository, read the kit, print, progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rempart.cli.context import Context
from rempart.core.errors import IntegrityError, UserError
from rempart.repository.repo import Repository
from rempart.storage.base import Backend
from rempart.storage.wrappers import RetryBackend

if TYPE_CHECKING:  # imported where used: a backup needs neither (fewer files to read at start-up)
    from rempart.crypto.kit import RecoveryKit
    from rempart.repository.reader import ReadSession


def vault_token(ctx: Context) -> str | None:
    token = ctx.env.get("REMPART_VAULT_TOKEN")
    if token:
        return token.strip()
    path = ctx.env.get("REMPART_VAULT_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read the vault token file {path}: {exc.strerror}") from exc
    return None


def open_backend(ctx: Context, *, create: bool = False) -> Backend:
    from rempart.storage.factory import open_backend as factory

    location = ctx.require_repo()
    backend = factory(location, create=create, vault_token=vault_token(ctx),
                      vault_ca=ctx.env.get("REMPART_VAULT_CA"), vault_pin=ctx.env.get("REMPART_VAULT_PIN"),
                      clock=ctx.clock)
    return RetryBackend(backend)


def open_repo(ctx: Context) -> Repository:
    return Repository.open(open_backend(ctx))


def read_session(ctx: Context, repo: Repository, kit: str | RecoveryKit | None) -> ReadSession:
    """A session that decrypts ``repo`` with ``kit`` (a kit file, or one already unlocked)."""
    from rempart.cli.kitfile import load_kit
    from rempart.crypto.kit import RecoveryKit
    from rempart.repository.reader import ReadSession

    if not isinstance(kit, RecoveryKit):
        kit = load_kit(ctx, kit)
    if kit.repository != repo.config.id:
        raise UserError(f"this recovery kit belongs to repository {kit.repository[:8]}, not {repo.config.id[:8]}")
    # over a network each request costs a round trip (and vault CPU): runs of blobs step over up
    # to 256 KiB of unneeded bytes (1 MiB fetched 300 MB for 238 MB of packs in a 300 MB
    # restore, 256 KiB 244 MB in 361 requests instead of 266), and two more runs per reader are
    # fetched while one is decrypted and written (bounded: no whole packs are fetched or
    # cached; the restore processes, which fetch their own ranges, use the same gaps and read
    # up to 12 MiB ahead instead); locally, reads are cheap
    remote = "://" in (ctx.repo or "") and not (ctx.repo or "").startswith("file://")
    return ReadSession(repo, kit.private_key, kit.id_key,
                       max_gap=256 * 1024 if remote else 0, readahead=2 if remote else 0)


def resolve_snapshot(repo: Repository, ref: str) -> str:
    """'latest', a full name, or a unique prefix of at least 4 characters. Damaged snapshot
    files are skipped with a warning ('latest' is then the newest readable snapshot); naming
    one is an IntegrityError."""
    damaged: list[str] = []
    snaps = sorted(repo.list_snapshots(damaged), key=lambda s: str(s[1].plain.get("time", "")))
    if ref != "latest" and len(ref) < 4:
        raise UserError("give at least 4 characters of the snapshot id, or 'latest'")
    hit = [n for n in damaged if n.startswith(ref.lower())]
    if hit and ref != "latest":
        raise IntegrityError(f"snapshot {hit[0][:8]} is damaged and cannot be read",
                             hint="`rempart check` lists what is damaged; choose another snapshot")
    warn_damaged(damaged)
    if not snaps:
        raise UserError("the repository has no readable snapshot" if damaged else "the repository has no snapshot yet")
    if ref == "latest":
        return snaps[-1][0]
    matches = [n for n, _ in snaps if n.startswith(ref.lower())]
    if len(matches) != 1:
        raise UserError(f"no unique snapshot matches {ref[:64]!r} ({len(matches)} found)")
    return matches[0]


def warn_damaged(damaged: list[str]) -> None:
    """One line on stderr per snapshot file that could not be read (skipped by the caller)."""
    for name in damaged:
        print(f"warning: snapshot {name[:8]} is damaged and was skipped (run `rempart check`)", file=sys.stderr)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def progress_line(ctx: Context, label: str) -> Iterator[Any]:
    """A live status line on a terminal (rich), redrawn at most 10 times a second; ``silent``
    when quiet, piped or --json (a caller can then skip building its text)."""
    if ctx.quiet or not sys.stderr.isatty():
        yield silent
        return
    import time

    from rich.console import Console
    from rich.status import Status

    last = [0.0]

    def show(text: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1:
            last[0] = now
            status.update(f"{label} {text}")

    with Status(label, console=Console(stderr=True)) as status:
        yield show


def silent(text: str) -> None:
    """The status line of a run that shows none."""

"""rempart init: create a repository, its recovery kit, and this machine's agent key."""

from __future__ import annotations

import argparse
from pathlib import Path

from rempart.agent.setup import check_kit_target, create_repository
from rempart.cli.common import open_backend
from rempart.cli.context import Context
from rempart.repository.config import DEFAULT_PACK_SIZE


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kit", required=True, help="where to write the recovery kit (keep it offline)")
    p.add_argument("--printable", help="also write the kit as printable text to this file")
    p.add_argument("--pack-size", type=int, default=DEFAULT_PACK_SIZE >> 20, metavar="MIB",
                   help=f"target pack size in MiB (default {DEFAULT_PACK_SIZE >> 20}; smaller packs resume "
                   "faster on slow links)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    kit_path = Path(args.kit)
    check_kit_target(kit_path)
    passphrase = ctx.secret("REMPART_KIT_PASSPHRASE", "new recovery kit passphrase", confirm=True)
    backend = open_backend(ctx, create=True)
    created = create_repository(backend, ctx.state_dir, kit_path, passphrase, ctx.clock, kdf=_kdf(ctx),
                                printable=Path(args.printable) if args.printable else None,
                                pack_size=args.pack_size * 1024 * 1024)
    if ctx.json:
        from rempart.cli.common import print_json

        print_json({"repository": created.repo_id, "kit": str(kit_path)})
    else:
        ctx.print(f"created repository {created.repo_id[:8]} at {ctx.repo}")
        ctx.print(f"recovery kit written to {kit_path}: keep it offline, with its passphrase;")
        ctx.print("without it no backup can ever be restored. This machine can back up, not restore.")
    return 0


def _kdf(ctx: Context) -> dict[str, object] | None:
    """REMPART_KDF_TEST=1 selects cheap KDF parameters (test suites only)."""
    if ctx.env.get("REMPART_KDF_TEST") == "1":
        from rempart.crypto.kit import TEST_KDF

        return dict(TEST_KDF)
    return None

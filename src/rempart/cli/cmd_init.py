"""rempart init: create a repository, its recovery kit, and this machine's agent key."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rempart.agent.credentials import AgentCredential, save_credential
from rempart.cli.common import open_backend
from rempart.cli.context import Context
from rempart.core.clock import to_iso
from rempart.core.errors import AlreadyExists, UserError
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.crypto.kit import RecoveryKit, encrypt_kit, to_printable
from rempart.repository.config import CONFIG, new_config


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kit", required=True, help="where to write the recovery kit (keep it offline)")
    p.add_argument("--printable", help="also write the kit as printable text to this file")


def run(args: argparse.Namespace, ctx: Context) -> int:
    kit_path = Path(args.kit)
    if kit_path.exists():
        raise UserError(f"{kit_path} exists already; refusing to overwrite a recovery kit")
    passphrase = ctx.secret("REMPART_KIT_PASSPHRASE", "new recovery kit passphrase", confirm=True)
    private, id_key = RecoveryPrivateKey.generate(), IdKey.generate()
    config = new_config(to_iso(ctx.clock.now()), private, id_key)
    kit = RecoveryKit(config.id, private, id_key)
    kit_bytes = encrypt_kit(kit, passphrase, _kdf(ctx))
    # write the kit first: a repository without its kit would be unreadable
    fd = os.open(kit_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(kit_bytes)
        f.flush()
        os.fsync(f.fileno())
    if args.printable:
        Path(args.printable).write_text(to_printable(kit_bytes))
    backend = open_backend(ctx, create=True)
    try:
        backend.save(CONFIG, config.to_bytes())
    except AlreadyExists:
        kit_path.unlink()
        raise UserError("a repository exists at this location already") from None
    save_credential(ctx.state_dir, AgentCredential(config.id, private.public, id_key))
    if ctx.json:
        from rempart.cli.common import print_json

        print_json({"repository": config.id, "kit": str(kit_path)})
    else:
        ctx.print(f"created repository {config.id[:8]} at {ctx.repo}")
        ctx.print(f"recovery kit written to {kit_path}: keep it offline, with its passphrase;")
        ctx.print("without it no backup can ever be restored. This machine can back up, not restore.")
    return 0


def _kdf(ctx: Context) -> dict[str, object] | None:
    """REMPART_KDF_TEST=1 selects cheap KDF parameters (test suites only)."""
    if ctx.env.get("REMPART_KDF_TEST") == "1":
        from rempart.crypto.kit import TEST_KDF

        return dict(TEST_KDF)
    return None

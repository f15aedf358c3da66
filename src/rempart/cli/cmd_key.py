"""rempart key ...: recovery kit commands.

  verify         check the kit and its passphrase against the repository
  printable      write the kit as printable text (base32), for paper storage
  qr             write the kit as a QR code image (PNG or SVG by file name)
  add-agent      give this machine an agent key from the kit (after a reinstall)
  passwd         write a copy of the kit under a new passphrase
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rempart.agent.credentials import AgentCredential, save_credential
from rempart.cli.common import open_repo
from rempart.cli.context import Context
from rempart.cli.kitfile import load_kit
from rempart.core.errors import UserError
from rempart.crypto.kit import encrypt_kit, to_printable


def add_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("action", choices=["verify", "printable", "qr", "add-agent", "passwd"])
    p.add_argument("--kit", help="recovery kit file (env REMPART_KIT)")
    p.add_argument("--out", help="output file (printable, qr, passwd)")


def run(args: argparse.Namespace, ctx: Context) -> int:
    kit = load_kit(ctx, args.kit)
    if args.action in ("verify", "add-agent"):
        repo = open_repo(ctx)
        if kit.repository != repo.config.id or kit.private_key.public.raw != repo.config.public_key.raw:
            raise UserError("this recovery kit does not belong to this repository")
        if repo.config.sealed_id_key and kit.private_key.unseal(repo.config.sealed_id_key) != kit.id_key.raw:
            raise UserError("the kit's id key differs from the repository's")
        if args.action == "add-agent":
            path = save_credential(ctx.state_dir, AgentCredential(repo.config.id, kit.private_key.public, kit.id_key))
            ctx.print(f"agent key written to {path}")
        else:
            ctx.print(f"the recovery kit opens and matches repository {repo.config.id[:8]}")
        return 0
    if not args.out:
        raise UserError(f"`key {args.action}` needs --out FILE")
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists already")
    kit_bytes = Path(args.kit or ctx.env["REMPART_KIT"]).read_bytes()
    if args.action == "printable":
        out.write_text(to_printable(kit_bytes))
    elif args.action == "qr":
        import segno

        segno.make(to_printable(kit_bytes), error="m").save(str(out), scale=4)
    else:
        new = ctx.secret("REMPART_NEW_KIT_PASSPHRASE", "new kit passphrase", confirm=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(encrypt_kit(kit, new))
    ctx.print(f"wrote {out}")
    return 0

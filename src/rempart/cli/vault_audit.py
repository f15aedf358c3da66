"""``rempart vault audit ...``: check and export the vault's hash-chained audit trail (a helper
of cmd_vault, not a command module of its own):

    rempart vault audit verify                       the database's chain against its checkpoint
    rempart vault audit verify --file EXPORT [--checkpoint FILE] [--partial]
                                                     an exported chain, without the vault
    rempart vault audit export [--output FILE] [--after SEQ]
                                                     JSON Lines, one record per line

An export carries every field of every record, hashes included, so whoever receives it (the
practice's data protection officer, an HDS auditor) can check it with ``verify --file`` on
another machine and compare its head hash with a copy of the checkpoint kept off the vault host.
Records hold token ids, never tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rempart.cli.context import Context
from rempart.core.errors import LocalError, UserError

_CFG_HELP = "vault TOML config file (env REMPART_VAULT_CONFIG)"
#: records read from the database per query while exporting
PAGE = 5000


def add_parser(sub: Any) -> None:
    au = sub.add_parser("audit", help="check or export the audit trail")
    asub = au.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser("verify", help="check the hash chain and the checkpoint",
                        description="check the hash chain: the vault's own (with --config), or an export's")
    v.add_argument("--config", help=_CFG_HELP)
    v.add_argument("--file", type=Path, help="an export (JSON Lines) to check instead of the vault's database")
    v.add_argument("--checkpoint", type=Path, help="with --file: a copy of the vault's checkpoint file to "
                                                   "check the export against")
    v.add_argument("--partial", action="store_true",
                   help="with --file: the export starts after record 1 (made with --after)")
    e = asub.add_parser("export", help="write the audit trail as JSON Lines",
                        description="write the audit trail as JSON Lines (every field, hashes included)")
    e.add_argument("--config", help=_CFG_HELP)
    e.add_argument("--output", type=Path, help="new file to write (default: standard output)")
    e.add_argument("--after", type=int, default=0, metavar="SEQ", help="only records after this one")


def run(args: argparse.Namespace, ctx: Context, config: Callable[[], Any]) -> int:
    if args.audit_command == "verify":
        return _verify(args, ctx, config)
    return _export(args, ctx, config())


def _emit(ctx: Context, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if ctx.json else text)


def _verify(args: argparse.Namespace, ctx: Context, config: Callable[[], Any]) -> int:
    from rempart.vault.audit import verify, verify_records

    if args.file is None:
        if args.checkpoint or args.partial:
            raise UserError("--checkpoint and --partial go with --file")
        cfg = config()
        from rempart.vault.bootstrap import open_vault

        res = verify(open_vault(cfg, ctx.clock).engine, cfg.audit_checkpoint)
        where = "audit trail"
    else:
        try:
            with args.file.open("r", encoding="utf-8") as f:
                res = verify_records(_lines(f, args.file), args.checkpoint, partial=args.partial)
        except OSError as exc:
            raise LocalError(f"cannot read {args.file}: {exc.strerror}") from None
        where = f"export {args.file}"
    _emit(ctx, {"ok": res.ok, "count": res.count, "problems": list(res.problems)},
          f"{where} OK: {res.count} records" if res.ok else f"{where} FAILED:\n  " + "\n  ".join(res.problems))
    return 0 if res.ok else 20


def _lines(f: Any, path: Path) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{path}: line {n} is not JSON", hint="give a file written by `rempart vault "
                                                                   "audit export`") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}: line {n} is not an audit record")
        yield rec


def _export(args: argparse.Namespace, ctx: Context, cfg: Any) -> int:
    import sqlalchemy as sa

    from rempart.vault import db
    from rempart.vault.audit import FIELDS
    from rempart.vault.bootstrap import open_vault

    if args.after < 0:
        raise UserError("--after must be >= 0")
    engine = open_vault(cfg, ctx.clock).engine
    out, tmp = sys.stdout, None
    if args.output is not None:
        if args.output.exists():
            raise UserError(f"{args.output} already exists", hint="choose a new file name")
        tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
        try:
            out = tmp.open("x", encoding="utf-8")
        except OSError as exc:
            raise LocalError(f"cannot write {args.output}: {exc.strerror}") from None
    count, after = 0, args.after
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(db.audit).where(db.audit.c.seq > after)
                                    .order_by(db.audit.c.seq).limit(PAGE)).all()
            for r in rows:
                out.write(json.dumps({k: getattr(r, k) for k in FIELDS}, separators=(",", ":")) + "\n")
            count += len(rows)
            if len(rows) < PAGE:
                break
            after = rows[-1].seq
        if tmp is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.link(tmp, args.output)  # never replaces a file that appeared meanwhile
    except OSError as exc:
        raise LocalError(f"cannot write {args.output}: {exc.strerror}") from None
    finally:
        if tmp is not None:
            out.close()
            tmp.unlink(missing_ok=True)
    if tmp is not None:
        _emit(ctx, {"records": count, "output": str(args.output)}, f"{count} audit records written to {args.output}")
    return 0

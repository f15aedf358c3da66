"""rempart enroll --vault URL [--code CODE]: enroll this machine with a vault.

The enrollment code is single use and short-lived; prefer REMPART_ENROLL_CODE or ``--code -``
(read from standard input) to keep it out of the shell history and the process list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rempart.cli.context import Context
from rempart.core.errors import UserError
from rempart.repository.config import DEFAULT_PACK_SIZE


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault", required=True, help="the vault: https://HOST:PORT")
    p.add_argument("--code", help="enrollment code, or '-' to read it from standard input "
                   "(default: env REMPART_ENROLL_CODE, which is preferred)")
    p.add_argument("--ca", help="CA or certificate file of the vault (copied into the state folder)")
    p.add_argument("--pin", help="SHA-256 fingerprint of the vault's certificate (from `rempart vault fingerprint`)")
    p.add_argument("--kit", required=True, help="where to write the recovery kit for the IT provider (keep it offline)")
    p.add_argument("--printable", help="also write the kit as printable text to this file")
    p.add_argument("--path", action="append", default=[], dest="paths", help="folder or file to back up (repeatable)")
    p.add_argument("--interval-minutes", type=float, default=60.0, help="backup interval in opening hours (default 60)")
    p.add_argument("--opening-hours", default="07:00-20:00", help="default 07:00-20:00")
    p.add_argument("--days", default="mon,tue,wed,thu,fri", help="opening days (default mon,tue,wed,thu,fri)")
    p.add_argument("--daily-at", default="21:30", help="one run every day at this time (default 21:30; 'off')")
    p.add_argument("--timezone", default="", help="IANA time zone (default: this machine's)")
    p.add_argument("--upload-kbps", type=float, default=0.0, help="upload cap in kB/s (default 0: none)")
    p.add_argument("--pack-size-mib", type=float, default=DEFAULT_PACK_SIZE / (1 << 20), help=argparse.SUPPRESS)


def _code(args: argparse.Namespace, ctx: Context) -> str | None:
    if args.code == "-":
        code = sys.stdin.readline().strip()
        if not code:
            raise UserError("no enrollment code on standard input")
        return code
    return args.code or ctx.env.get("REMPART_ENROLL_CODE") or None


def run(args: argparse.Namespace, ctx: Context) -> int:
    from rempart.agent.config import parse_config
    from rempart.agent.enroll import CONFIG_FILE, EnrollRequest, enroll
    from rempart.cli.cmd_init import _kdf

    config_path = Path(args.config or ctx.env.get("REMPART_CONFIG") or ctx.state_dir / CONFIG_FILE)
    schedule: dict[str, object] = {
        "interval_minutes": args.interval_minutes, "opening_hours": args.opening_hours,
        "days": [d.strip() for d in args.days.split(",") if d.strip()], "daily_at": args.daily_at,
    }
    if args.timezone:
        schedule["timezone"] = args.timezone
    limits: dict[str, object] = {"upload_kbps": args.upload_kbps}
    # validate the settings before the single-use code is spent
    parse_config({"repository": {"url": "/nowhere"}, "schedule": schedule, "limits": limits}, {},
                 base=config_path.parent)
    code = _code(args, ctx)
    passphrase = ctx.secret("REMPART_KIT_PASSPHRASE", "new recovery kit passphrase", confirm=True)
    req = EnrollRequest(
        vault=args.vault, code=code, state_dir=ctx.state_dir, config_path=config_path,
        kit_path=Path(args.kit), passphrase=passphrase, paths=tuple(Path(p) for p in args.paths),
        ca_file=Path(args.ca) if args.ca else None, pin=args.pin or "",
        printable=Path(args.printable) if args.printable else None, kdf=_kdf(ctx),
        pack_size=int(args.pack_size_mib * 1024 * 1024), schedule=schedule, limits=limits,
    )
    res = enroll(req, ctx.clock)
    if ctx.json:
        from rempart.cli.common import print_json

        print_json({"practice": res.practice, "repository": res.repository, "repository_id": res.repo_id,
                    "config": str(res.config_path), "token_file": str(res.token_file), "kit": args.kit,
                    "resumed": res.resumed})
    else:
        ctx.print(f"enrolled with practice {res.practice}: repository {res.repo_id[:8]} at {res.repository}")
        ctx.print(f"recovery kit written to {args.kit}: give it to the IT provider and keep it offline,")
        ctx.print("with its passphrase; without it no backup can ever be restored.")
        ctx.print(f"agent configuration: {res.config_path} (edit [backup] paths and [[sources]]),")
        ctx.print("then start the service: `rempart agent install` (Linux) or see docs/agent.md (Windows).")
    return 0

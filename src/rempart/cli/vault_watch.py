"""Sub-commands of ``rempart vault`` for the watch and the dashboard (helpers of cmd_vault, not a
command module of their own):

    rempart vault watch --once                      evaluate expectations, send alerts/reports, exit
    rempart vault watch                             the same, every [watch] interval_seconds (foreground)
    rempart vault watch status                      status light and open conditions per practice
    rempart vault watch set PRACTICE [--provider ORG] [--contact EMAIL ...] [--lang fr|en]
                              [--every S] [--grace S] [--missing-after S] [--max-gap S]
                              [--hours HH:MM-HH:MM | --always] [--days mon-fri] [--tz ZONE] [--no-reports]
    rempart vault watch provider ORG --contact EMAIL ... [--lang fr|en]
    rempart vault watch drill PRACTICE --outcome ok|failed [--note TEXT]
    rempart vault user add NAME --role admin|provider [--provider ORG] [--lang fr|en]
    rempart vault user passwd NAME | disable NAME | list
    rempart vault report send [--practice P] [--lang fr|en]

Passwords come from ``REMPART_USER_PASSWORD`` or an interactive prompt, never from argv.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rempart.cli.context import Context
from rempart.core.errors import UserError

COMMANDS = ("watch", "user", "report")
_CFG_HELP = "vault TOML config file (env REMPART_VAULT_CONFIG)"


def add_parsers(sub: Any) -> None:
    w = sub.add_parser("watch", help="evaluate backup expectations and send alerts (see docs/watch.md)",
                       description="evaluate backup expectations and send alerts and reports")
    w.add_argument("--config", help=_CFG_HELP)
    w.add_argument("--once", action="store_true", help="one evaluation, then exit (for cron)")
    ws = w.add_subparsers(dest="watch_command", metavar="ACTION")

    def leaf(parent: Any, name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help=_CFG_HELP, default=argparse.SUPPRESS)
        return p

    leaf(ws, "status", "status light and open conditions of every practice")
    s = leaf(ws, "set", "set a practice's IT provider, contacts, language and expected schedule")
    s.add_argument("practice")
    s.add_argument("--provider", help="IT provider organisation (its dashboard users see this practice)")
    s.add_argument("--contact", action="append", help="e-mail address told first (repeat; replaces the list)")
    s.add_argument("--lang", choices=["fr", "en"])
    for k in ("every", "grace", "missing-after", "max-gap"):
        s.add_argument(f"--{k}", type=float, metavar="SECONDS")
    s.add_argument("--hours", help="opening hours HH:MM-HH:MM")
    s.add_argument("--always", action="store_true", help="expect backups around the clock")
    s.add_argument("--days", help="opening days, e.g. mon-fri or mon-sat")
    s.add_argument("--tz", help="time zone of the practice, e.g. Europe/Paris")
    s.add_argument("--no-reports", action="store_true", help="no weekly report for this practice")
    s.add_argument("--reports", action="store_true", help="weekly reports again")
    pv = leaf(ws, "provider", "set an IT provider's escalation contacts")
    pv.add_argument("name")
    pv.add_argument("--contact", action="append", required=True, help="e-mail address (repeat)")
    pv.add_argument("--lang", choices=["fr", "en"], default="fr")
    d = leaf(ws, "drill", "record a restore drill (shown in the weekly report)")
    d.add_argument("practice")
    d.add_argument("--outcome", choices=["ok", "failed"], required=True)
    d.add_argument("--note", default="")

    u = sub.add_parser("user", help="dashboard users")
    us = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    a = leaf(us, "add", "add a dashboard user (password from REMPART_USER_PASSWORD or a prompt)")
    a.add_argument("name")
    a.add_argument("--role", choices=["admin", "provider"], required=True)
    a.add_argument("--provider", help="for --role provider: the organisation whose practices it sees")
    a.add_argument("--lang", choices=["fr", "en"], default="fr")
    leaf(us, "passwd", "change a user's password (ends its sessions)").add_argument("name")
    leaf(us, "disable", "disable a user (ends its sessions)").add_argument("name")
    leaf(us, "list", "list dashboard users")
    tp = leaf(us, "totp", "give a user a one-time-code secret for its logins (shown once), or --off")
    tp.add_argument("name")
    tp.add_argument("--off", action="store_true", help="remove the user's second factor")

    r = sub.add_parser("report", help="weekly reports")
    rs = r.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    sd = leaf(rs, "send", "send the report now (all practices, or one)")
    sd.add_argument("--practice")
    sd.add_argument("--lang", choices=["fr", "en"])


def _emit(ctx: Context, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if ctx.json else text)


def run(args: argparse.Namespace, ctx: Context, config: Any) -> int:
    from rempart.vault.bootstrap import open_vault
    from rempart.vault.watch.service import WatchService

    vault = open_vault(config, ctx.clock)
    service = WatchService(vault, config.watch)
    if args.vault_command == "watch":
        return _watch(args, ctx, vault, service)
    if args.vault_command == "user":
        return _user(args, ctx, vault)
    return _report(args, ctx, vault, service)


def _tick_text(res: Any) -> str:
    lines = [f"{name}: {a.kind} {a.level} -> {', '.join(a.audiences)}" for name, a in res.evaluation.actions]
    lines.append(f"{len(res.evaluation.states)} practice(s) checked, {len(res.evaluation.actions)} alert change(s), "
                 f"{res.reports} report(s) queued, {res.dispatch.sent} notification(s) sent, "
                 f"{res.dispatch.failed} failed")
    lines += [f"  not sent: {e}" for e in res.dispatch.errors]
    return "\n".join(lines)


def _watch(args: argparse.Namespace, ctx: Context, vault: Any, service: Any) -> int:
    from rempart.vault.watch import settings as st

    c = args.watch_command
    if c is None:
        while True:
            res = service.tick()
            _emit(ctx, {"actions": [(n, a.kind, a.level) for n, a in res.evaluation.actions],
                        "sent": res.dispatch.sent, "failed": res.dispatch.failed}, _tick_text(res))
            if args.once:
                return 1 if res.dispatch.failed else 0
            time.sleep(service.config.interval_seconds)
    if c == "status":
        states = service.watch.states()
        _emit(ctx, [{"practice": s.name, "light": s.light, "conditions": {k: v.level for k, v in s.conditions.items()}}
                    for s in states],
              "\n".join(f"{s.name:<24} {s.light:<6} {' '.join(sorted(v.level for v in s.conditions.values()))}"
                        for s in states) or "no practices")
        return 0
    if c == "provider":
        with vault.engine.begin() as conn:
            st.put_provider(conn, args.name, args.contact, args.lang)
            vault.audit(conn, "cli", "watch.provider", None, "ok", {"provider": args.name, "contacts": len(args.contact)})
        vault.checkpoint(conn)
        _emit(ctx, {"provider": args.name, "contacts": args.contact}, f"provider {args.name}: {', '.join(args.contact)}")
        return 0
    p = vault.practice(args.practice)
    if c == "drill":
        from rempart.vault.watch.drills import DrillRecord, record_drill

        record_drill(vault, p, DrillRecord(args.outcome, note=args.note), actor="cli")
        _emit(ctx, {"practice": p.name, "outcome": args.outcome}, f"restore drill recorded for {p.name}: {args.outcome}")
        return 0
    overrides: dict[str, Any] = {}
    for k in ("every", "grace", "missing_after", "max_gap", "days", "tz"):
        v = getattr(args, k)
        if v is not None:
            overrides[k] = v
    if args.hours and args.always:
        raise UserError("--hours and --always are exclusive")
    if args.hours or args.always:
        overrides["hours"] = "" if args.always else args.hours
    with vault.engine.begin() as conn:
        new = st.put(conn, p.id, provider=args.provider, contacts=args.contact, lang=args.lang,
                     overrides=overrides or None,
                     reports=False if args.no_reports else True if args.reports else None)
        vault.audit(conn, "cli", "watch.set", p.name, "ok",
                    {"provider": new.provider, "contacts": len(new.contacts), "expectation": new.overrides})
    vault.checkpoint(conn)
    exp = st.expectation(service.config, new.overrides)
    _emit(ctx, {"practice": p.name, "provider": new.provider, "contacts": list(new.contacts), "lang": new.lang,
                "expectation": new.overrides, "reports": new.reports},
          f"{p.name}: provider={new.provider or '-'} contacts={', '.join(new.contacts) or '-'} lang={new.lang}\n"
          f"  {exp.describe('en')}")
    return 0


def _user(args: argparse.Namespace, ctx: Context, vault: Any) -> int:
    from rempart.vault.dashboard import auth

    c = args.user_command
    if c == "list":
        with vault.engine.connect() as conn:
            users = auth.list_users(conn)
        _emit(ctx, [{"name": u.username, "role": u.role, "provider": u.provider, "disabled": d} for u, d in users],
              "\n".join(f"{u.username:<24} {u.role:<9} {u.provider or '':<20} {'DISABLED' if d else ''}"
                        for u, d in users) or "no users")
        return 0
    if c == "totp":
        from rempart.vault.dashboard import totp

        with vault.engine.begin() as conn:
            uri = None if args.off else totp.enable(conn, args.name)
            if args.off:
                totp.disable(conn, args.name)
            conn.execute(auth.t.sessions.delete().where(auth.t.sessions.c.username == args.name))
            vault.audit(conn, "cli", "user.totp", None, "ok", {"user": args.name, "enabled": not args.off})
        vault.checkpoint(conn)
        _emit(ctx, {"user": args.name, "otpauth": uri}, f"user {args.name}: one-time codes off" if args.off else
              f"user {args.name}: one-time codes on (sessions ended). Add this to the user's authenticator app "
              f"now; it is shown once:\n{uri}")
        return 0
    if c == "disable":
        with vault.engine.begin() as conn:
            auth.disable_user(conn, args.name)
            vault.audit(conn, "cli", "user.disable", None, "ok", {"user": args.name})
        vault.checkpoint(conn)
        print(f"user {args.name} disabled")
        return 0
    password = ctx.secret("REMPART_USER_PASSWORD", f"password for {args.name}", confirm=True)
    with vault.engine.begin() as conn:
        if c == "add":
            auth.add_user(conn, args.name, password, args.role, args.provider, args.lang, vault.now())
        else:
            auth.set_password(conn, args.name, password)
        vault.audit(conn, "cli", f"user.{c}", None, "ok", {"user": args.name, "role": getattr(args, "role", None)})
    vault.checkpoint(conn)
    print(f"user {args.name}: {'added' if c == 'add' else 'password changed'}")
    return 0


def _report(args: argparse.Namespace, ctx: Context, vault: Any, service: Any) -> int:
    import sqlalchemy as sa

    from rempart.vault import db
    from rempart.vault.watch.report import queue_report

    now = vault.clock.now()
    queued: list[str] = []
    skipped: list[str] = []
    with vault.engine.begin() as conn:
        q = sa.select(db.practices).order_by(db.practices.c.name)
        if args.practice:
            q = q.where(db.practices.c.name == vault.practice(args.practice).name)
        for row in conn.execute(q).all():
            (queued if queue_report(service.watch, conn, row, now, lang=args.lang) else skipped).append(row.name)
    res = service.dispatcher.run()
    _emit(ctx, {"queued": queued, "no_contact": skipped, "sent": res.sent, "failed": res.failed},
          f"{len(queued)} report(s) queued, {res.sent} notification(s) sent, {res.failed} failed"
          + (f"\nno contact for: {', '.join(skipped)}" if skipped else ""))
    return 1 if res.failed else 0

"""rempart vault ...: run and administer a vault server (operates on the vault's own config,
database and storage; the server does not need to be running except for ``serve``)."""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from pathlib import Path
from typing import Any

from rempart.cli.context import Context
from rempart.core.errors import ConfigError, LocalError, UserError


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="vault_command", metavar="SUBCOMMAND", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", help="vault TOML config file (env REMPART_VAULT_CONFIG)")
        return s

    cmd("serve", "run the vault HTTPS server")
    cmd("fingerprint", "print the SHA-256 fingerprint of the vault's TLS certificate (for pinning)")
    cmd("admin-token", "create a provider admin token (printed once)")
    pr = sub.add_parser("practice", help="manage practices")
    psub = pr.add_subparsers(dest="practice_command", metavar="ACTION", required=True)

    def pcmd(name: str, help_: str, with_name: bool = True) -> argparse.ArgumentParser:
        s = psub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", help="vault TOML config file (env REMPART_VAULT_CONFIG)")
        if with_name:
            s.add_argument("name", help="practice name (lowercase letters, digits, dashes)")
        return s

    a = pcmd("add", "create a practice and print its backup and restore tokens once")
    a.add_argument("--quota", type=int, default=None, help="quota in bytes (0 = unlimited)")
    pcmd("list", "list practices", with_name=False)
    pcmd("enroll-code", "issue a single-use, short-lived enrollment code for a new agent")
    t = pcmd("token", "issue another token for a practice (printed once)")
    t.add_argument("--scope", choices=["backup", "restore"], required=True)
    q = pcmd("quota", "set a practice's quota")
    q.add_argument("bytes", type=int, help="quota in bytes (0 = unlimited)")
    for n, h in (("freeze", "stop every deletion for a practice"), ("release", "release an incident freeze")):
        f = pcmd(n, h)
        f.add_argument("--reason", default="", help="recorded in the audit trail")
    cl = pcmd("close", "end of contract: revoke the practice's tokens; GC erases its data after the "
                       "retention minimum age")
    cl.add_argument("--reason", required=True, help="contract end, request reference (audited)")
    ro = pcmd("reopen", "undo a closing within its grace period")
    ro.add_argument("--reason", default="", help="recorded in the audit trail")
    ho = pcmd("hold", "put a legal hold on a snapshot: retention never forgets it until released")
    ho.add_argument("snapshot", help="snapshot id (at least its first 8 hex digits)")
    ho.add_argument("--reason", required=True, help="case or request reference (recorded in the audit trail)")
    rh = pcmd("release-hold", "release a snapshot's legal hold")
    rh.add_argument("snapshot", help="snapshot id (at least its first 8 hex digits)")
    rh.add_argument("--reason", default="", help="recorded in the audit trail")
    pol = pcmd("policy", "set a practice's retention policy (unset values keep the vault default)")
    for k in ("keep-last", "hourly", "daily", "weekly", "monthly", "yearly"):
        pol.add_argument(f"--{k}", type=int)
    pol.add_argument("--min-age-days", type=float)
    cmd("rebuild-index", "rebuild the metadata database index from the stored objects alone")
    bk = cmd("backup-db", "copy the vault's SQLite database consistently while it serves (a new file)")
    bk.add_argument("--output", required=True, type=Path, help="new file to write")
    g = cmd("gc", "apply retention and collect garbage now")
    g.add_argument("--practice", help="only this practice")
    rp = cmd("replicate", "copy every practice's objects to the [replica] storage now")
    rp.add_argument("--practice", help="only this practice")
    rr = cmd("repair", "put back, from the [replica], the objects the scrub found damaged")
    rr.add_argument("--practice", help="only this practice")
    sc = cmd("scrub", "re-read stored objects and check each still hashes to its name (no key needed)")
    sc.add_argument("--practice", help="only this practice")
    sc.add_argument("--max-gib", type=float, help="read at most this much per practice, least recently "
                                                   "verified first (default: everything)")
    from rempart.cli import vault_audit, vault_watch  # audit; watch, user, report (alerts and dashboard)

    vault_audit.add_parser(sub)
    vault_watch.add_parsers(sub)


def _config(args: argparse.Namespace, ctx: Context) -> Any:
    from rempart.vault.config import load_config

    path = getattr(args, "config", None) or ctx.env.get("REMPART_VAULT_CONFIG")
    if not path:
        raise ConfigError("the vault config file is needed", hint="pass --config FILE or set REMPART_VAULT_CONFIG")
    return load_config(Path(path))


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _emit(ctx: Context, data: Any, text: str) -> None:
    if ctx.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.vault_command == "audit":  # `verify --file` checks an export without any vault config
        from rempart.cli import vault_audit

        return vault_audit.run(args, ctx, lambda: _config(args, ctx))
    config = _config(args, ctx)
    from rempart.cli import vault_watch

    if args.vault_command in vault_watch.COMMANDS:
        return vault_watch.run(args, ctx, config)
    if args.vault_command == "serve":
        return _serve(config, ctx)
    if args.vault_command == "fingerprint":
        from rempart.vault.tls import ensure_certificate, format_fingerprint

        t = config.tls
        fp = ensure_certificate(t.cert, t.key, t.hostnames, ctx.clock.now(), self_signed=t.self_signed)
        _emit(ctx, {"sha256": fp}, format_fingerprint(fp))
        return 0
    from rempart.vault import practices as ops
    from rempart.vault.bootstrap import open_vault

    vault = open_vault(config, ctx.clock)
    actor = "cli"
    c = args.vault_command
    if c == "admin-token":
        tok = ops.new_token(vault, None, "admin", actor=actor)
        _emit(ctx, {"token": tok}, f"provider admin token (shown once, keep it safe):\n{tok}")
    elif c == "practice":
        return _practice(args, ctx, vault, actor)
    elif c == "rebuild-index":
        from rempart.vault.reindex import rebuild_index

        rep = rebuild_index(vault, actor=actor)
        _emit(ctx, rep.__dict__, f"rebuilt: {rep.practices} practice(s), {rep.objects} objects, "
              f"{rep.blobs} blobs, {rep.snapshots} snapshots, {len(rep.skipped)} skipped")
        for s in rep.skipped:
            print(f"  skipped {s}", file=sys.stderr)
    elif c == "backup-db":
        from rempart.vault.dbcopy import copy_database

        info = copy_database(vault, args.output, actor=actor)
        _emit(ctx, info, f"vault database copied to {info['output']} ({info['bytes']} bytes, "
                         f"{info['audit_records']} audit records, head {str(info['audit_head'])[:16]}); store it "
                         f"encrypted, off this host")
    elif c == "gc":
        from rempart.core.errors import LockedError
        from rempart.vault.gc import run_gc
        from rempart.vault.gc_schedule import gc_lock

        targets = [vault.practice(args.practice)] if args.practice else vault.practices()
        with gc_lock(config.data_dir / "gc.lock") as got:
            if not got:
                raise LockedError("another garbage collection is running (the vault's scheduled pass or "
                                  "another `rempart vault gc`)", hint="try again when it has finished")
            reports = [run_gc(vault, p, actor=actor) for p in targets]
        lines = [f"{r.practice}: " + ("frozen, nothing deleted" if r.frozen else
                 f"{len(r.forgotten)} snapshot(s) forgotten, {len(r.deleted_packs)} pack(s) deleted, "
                 f"{r.freed_bytes} bytes freed") + (f", {r.renewed_locks} lock(s) renewed" if r.renewed_locks else "")
                 for r in reports]
        _emit(ctx, [r.__dict__ for r in reports], "\n".join(lines) or "no practices")
    elif c in ("replicate", "repair"):
        return _replica(args, ctx, config, vault, actor)
    elif c == "scrub":
        from rempart.vault.scrub import scrub_practice

        if args.max_gib is not None and args.max_gib <= 0:
            raise UserError("--max-gib must be positive")
        budget = None if args.max_gib is None else int(args.max_gib * 2**30)
        targets = [vault.practice(args.practice)] if args.practice else vault.practices()
        scrubbed = [scrub_practice(vault, p, max_bytes=budget, actor=actor) for p in targets]
        lines = [f"{r.practice}: {r.objects} object(s), {r.bytes} bytes re-hashed, " +
                 (f"{len(r.damaged)} DAMAGED: " + ", ".join(f"{t}/{n[:12]} ({d})" for t, n, d in r.damaged[:10])
                  if r.damaged else "all intact") + (f", {r.repaired} repaired since the last pass" if r.repaired else "")
                 for r in scrubbed]
        _emit(ctx, [r.to_dict() for r in scrubbed], "\n".join(lines) or "no practices")
        return 20 if any(r.damaged for r in scrubbed) else 0
    return 0


def _replica(args: argparse.Namespace, ctx: Context, config: Any, vault: Any, actor: str) -> int:
    from rempart.core.errors import LockedError
    from rempart.vault.gc_schedule import gc_lock
    from rempart.vault.replica import open_replica, repair_from_replica, replicate_practice

    replica = open_replica(vault)
    targets = [vault.practice(args.practice)] if args.practice else vault.practices()
    with gc_lock(config.data_dir / "gc.lock") as got:
        if not got:
            raise LockedError("a garbage collection or replication is running (the vault's scheduled pass "
                              "or another command)", hint="try again when it has finished")
        if args.vault_command == "repair":
            fixed = [repair_from_replica(vault, replica, p, actor=actor) for p in targets]
            replica.close()
            _emit(ctx, [r.to_dict() for r in fixed], "\n".join(
                f"{r.practice}: {len(r.repaired)} object(s) put back"
                + "".join(f"\n  NOT REPAIRED {k}: {why}" for k, why in r.failed.items()) for r in fixed)
                or "no practices")
            return 20 if any(r.failed for r in fixed) else 0
        done = [replicate_practice(vault, replica, p, actor=actor) for p in targets]
    replica.close()
    _emit(ctx, [r.to_dict() for r in done], "\n".join(
        f"{r.practice}: {r.copied} object(s) copied ({r.bytes} bytes), {r.present} already there, "
        f"{r.removed} removed after GC" + (f", {len(r.damaged)} DAMAGED in the vault's storage (not copied)"
                                           if r.damaged else "") for r in done) or "no practices")
    return 20 if any(r.damaged for r in done) else 0


def _practice(args: argparse.Namespace, ctx: Context, vault: Any, actor: str) -> int:
    from rempart.vault import practices as ops
    from rempart.vault.config import RetentionPolicy

    a = args.practice_command
    if a == "add":
        toks = ops.add_practice(vault, args.name, actor=actor, quota_bytes=args.quota)
        _emit(ctx, {"practice": args.name, "tokens": toks},
              f"practice {args.name} created. Tokens (shown once, store them now):\n"
              f"  backup:  {toks['backup']}\n  restore: {toks['restore']}")
    elif a == "list":
        rows = [ops.status(vault, p) for p in vault.practices()]
        text = "\n".join(
            f"{r['practice']:<24} snapshots={r['snapshots']:<5} used={r['used_bytes']:<12} "
            f"quota={r['quota_bytes'] or '-':<12} {'FROZEN' if r['frozen'] else ''}"
            + (" ERASED" if r["erased_at"] else " CLOSED" if r["closed_at"] else "") for r in rows)
        _emit(ctx, rows, text or "no practices")
    elif a == "enroll-code":
        code = ops.enroll_code(vault, args.name, actor=actor)
        ttl = vault.config.limits.enroll_code_ttl_seconds
        _emit(ctx, {"code": code, "ttl_seconds": ttl},
              f"enrollment code for {args.name} (single use, valid {ttl / 3600:g} h):\n{code}")
    elif a == "token":
        tok = ops.new_token(vault, args.name, args.scope, actor=actor)
        _emit(ctx, {"token": tok}, f"{args.scope} token for {args.name} (shown once):\n{tok}")
    elif a == "quota":
        ops.set_quota(vault, args.name, args.bytes, actor=actor)
        _emit(ctx, {"quota_bytes": args.bytes}, f"quota of {args.name}: {args.bytes} bytes")
    elif a in ("freeze", "release"):
        ops.freeze(vault, args.name, a == "freeze", args.reason, actor=actor)
        _emit(ctx, {"frozen": a == "freeze"}, f"{args.name}: {'frozen' if a == 'freeze' else 'released'}")
    elif a == "close":
        from rempart.vault import closing

        after = closing.close(vault, args.name, args.reason, actor=actor)
        when = _utc(after)
        _emit(ctx, {"closed": True, "erase_after": after},
              f"{args.name}: closed, its tokens revoked. Its data is erased by GC from {when} on; until then a "
              f"restore token (`practice token {args.name} --scope restore`) lets it take its data "
              f"(`rempart mirror`), and `practice reopen` undoes this")
    elif a == "reopen":
        from rempart.vault import closing

        closing.reopen(vault, args.name, args.reason, actor=actor)
        _emit(ctx, {"closed": False}, f"{args.name}: reopened; issue new tokens")
    elif a in ("hold", "release-hold"):
        snap = ops.find_snapshot(vault, args.name, args.snapshot)
        ops.set_hold(vault, args.name, snap, a == "hold", args.reason, actor=actor)
        _emit(ctx, {"snapshot": snap, "hold": a == "hold"},
              f"{args.name}: snapshot {snap[:12]} {'held' if a == 'hold' else 'released from its hold'}")
    elif a == "policy":
        cur = vault.practice(args.name).policy.to_dict()
        for k in cur:
            v = getattr(args, k, None)
            if v is not None:
                cur[k] = v
        pol = RetentionPolicy.from_dict(cur)
        ops.set_policy(vault, args.name, pol, actor=actor)
        _emit(ctx, pol.to_dict(), f"policy of {args.name}: {pol.to_dict()}")
    else:  # pragma: no cover - argparse guards
        raise UserError(f"unknown action {a}")
    return 0


def _serve(config: Any, ctx: Context) -> int:
    import uvicorn

    from rempart.vault.app import create_app
    from rempart.vault.bootstrap import open_vault
    from rempart.vault.httpproto import http_protocol
    from rempart.vault.memory import keep_freed_memory
    from rempart.vault.reindex import reconcile
    from rempart.vault.tls import ensure_certificate, format_fingerprint

    vault = open_vault(config, ctx.clock)
    vault.store.prepare()
    rep = reconcile(vault)
    if rep.objects:
        print(f"recorded {rep.objects} object(s) stored before an interruption", flush=True)
    app = create_app(config, ctx.clock, vault=vault)
    kw: dict[str, Any] = {}
    scheme = "http"
    if config.tls.enabled:
        t = config.tls
        fp = ensure_certificate(t.cert, t.key, t.hostnames, ctx.clock.now(), self_signed=t.self_signed)
        kw = {"ssl_certfile": str(t.cert), "ssl_keyfile": str(t.key)}
        scheme = "https"
        print(f"certificate SHA-256 fingerprint (pin): {format_fingerprint(fp)}", flush=True)
    # bound here, before saying so: a port in use is one sentence and exit 1, not a "listening"
    # line followed by uvicorn's log
    sock = _listen(config.listen.host, config.listen.port)
    port = sock.getsockname()[1]
    print(f"rempart vault listening on {scheme}://{config.listen.host}:{port}", flush=True)
    keep_freed_memory()  # request bodies reuse warm heap pages instead of fresh ones each time
    server = uvicorn.Server(uvicorn.Config(app, host=config.listen.host, port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5, http=http_protocol(), **kw))
    server.run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (as uvicorn would bind it), or LocalError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use (is another vault running?)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise LocalError(f"cannot listen on {host}:{port}: {why}") from exc
    sock.set_inheritable(True)
    return sock

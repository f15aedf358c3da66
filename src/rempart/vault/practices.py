"""Practice management and per-practice records: tokens, enrollment, policy, quota, freeze,
run reports, status and timeline. All state changes are audited."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from rempart.core.errors import NotFound, PermissionDenied, UserError
from rempart.storage.base import FileType, Handle
from rempart.vault import db, tokens
from rempart.vault.config import RetentionPolicy
from rempart.vault.service import Practice, Vault
from rempart.vault.store import check_practice_name
from rempart.vault.watch.drills import drill_json, latest_drill

RUN_OUTCOMES = ("ok", "failed", "partial", "suspicious")


def add_practice(vault: Vault, name: str, *, actor: str, quota_bytes: int | None = None) -> dict[str, str]:
    """Create a practice and return its first tokens (shown once)."""
    check_practice_name(name)
    now = vault.now()
    with db.write(vault.engine) as conn:
        if conn.execute(sa.select(db.practices.c.id).where(db.practices.c.name == name)).first():
            raise UserError(f"practice {name!r} exists already")
        quota = vault.config.limits.default_quota_bytes if quota_bytes is None else quota_bytes
        res = conn.execute(db.practices.insert().values(
            name=name, created=now, quota_bytes=quota, used_bytes=0, frozen=False))
        pid = int(res.inserted_primary_key[0])  # type: ignore[index]
        out = {s: tokens.create_token(conn, scope=s, practice_id=pid, now=now, label=f"{name} {s}")
               for s in ("backup", "restore")}
        vault.audit(conn, actor, "practice.add", name, "ok", {"quota_bytes": quota})
    vault.checkpoint(conn)
    vault.store.backend(name)  # create the namespace
    return out


def ensure_practice_row(vault: Vault, name: str) -> Practice:
    """The practice, creating a bare row (no tokens) if only its storage exists (rebuild-index)."""
    try:
        return vault.practice(name)
    except NotFound:
        with db.write(vault.engine) as conn:
            conn.execute(db.practices.insert().values(
                name=name, created=vault.now(), quota_bytes=vault.config.limits.default_quota_bytes,
                used_bytes=0, frozen=False))
        return vault.practice(name)


def new_token(vault: Vault, practice: str | None, scope: str, *, actor: str) -> str:
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn) if practice else None
        if p is not None and p.closed_at is not None and scope != "restore":
            raise UserError(f"practice {p.name} is closed: only a restore token can be issued (to take its data)")
        pid = p.id if p else None
        tok = tokens.create_token(conn, scope=scope, practice_id=pid, now=vault.now(), label=scope)
        vault.audit(conn, actor, "token.create", practice, "ok", {"scope": scope, "token_id": tokens.token_id_of(tok)})
    vault.checkpoint(conn)
    return tok


def revoke_token(vault: Vault, token_id: str, *, actor: str) -> None:
    with db.write(vault.engine) as conn:
        if not tokens.revoke(conn, token_id):
            raise NotFound(f"no token with id {token_id[:20]!r}")
        vault.audit(conn, actor, "token.revoke", None, "ok", {"token_id": token_id[:20]})
    vault.auth_cache.clear()  # at once in this process (other processes: within the cache's TTL)
    vault.checkpoint(conn)


def enroll_code(vault: Vault, practice: str, *, actor: str) -> str:
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        if p.closed_at is not None:
            raise UserError(f"practice {p.name} is closed: no new agent can enroll")
        code = tokens.create_enroll_code(conn, p.id, now=vault.now(), ttl=vault.config.limits.enroll_code_ttl_seconds)
        vault.audit(conn, actor, "enroll-code.create", practice, "ok", {"code_id": code.split("-")[0]})
    vault.checkpoint(conn)
    return code


def enroll(vault: Vault, code: str, *, actor: str) -> tuple[str, str]:
    """Exchange an enrollment code for a new backup token: (practice, token)."""
    now = vault.now()
    with db.write(vault.engine) as conn:
        pid = tokens.redeem_enroll_code(conn, code, now=now)
        name = conn.execute(sa.select(db.practices.c.name).where(db.practices.c.id == pid)).scalar_one()
        tok = tokens.create_token(conn, scope="backup", practice_id=pid, now=now, label="enrolled agent")
        vault.audit(conn, actor, "enroll", name, "ok", {"token_id": tokens.token_id_of(tok)})
    vault.checkpoint(conn)
    return name, tok


def set_policy(vault: Vault, practice: str, policy: RetentionPolicy, *, actor: str) -> None:
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(policy=json.dumps(policy.to_dict())))
        vault.audit(conn, actor, "policy.set", practice, "ok", policy.to_dict())
    vault.checkpoint(conn)


def set_quota(vault: Vault, practice: str, quota_bytes: int, *, actor: str) -> None:
    if quota_bytes < 0:
        raise UserError("quota must be >= 0 (0 = unlimited)")
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(quota_bytes=quota_bytes))
        vault.audit(conn, actor, "quota.set", practice, "ok", {"quota_bytes": quota_bytes})
    vault.checkpoint(conn)


def freeze(vault: Vault, practice: str, frozen: bool, reason: str, *, actor: str) -> None:
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        vault.set_frozen(conn, p, frozen, reason or ("frozen by admin" if frozen else "released by admin"), actor=actor)
    vault.checkpoint(conn)


def mark_false_positive(vault: Vault, practice: str, snapshot: str, *, actor: str) -> None:
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        res = conn.execute(db.snapshots.update().where(
            db.snapshots.c.practice_id == p.id, db.snapshots.c.name == snapshot).values(false_positive=True))
        if not res.rowcount:
            raise NotFound(f"snapshot {snapshot[:64]!r} not found")
        vault.audit(conn, actor, "snapshot.false-positive", practice, "ok", {"name": snapshot})
    vault.checkpoint(conn)


def find_snapshot(vault: Vault, practice: str, prefix: str) -> str:
    """The full name of ``practice``'s snapshot whose name starts with ``prefix`` (at least 8
    hex digits, as ``rempart snapshots`` shows them); UserError when none or several match."""
    prefix = prefix.lower()
    if not (8 <= len(prefix) <= 64 and all(c in "0123456789abcdef" for c in prefix)):
        raise UserError(f"{prefix[:70]!r} is not a snapshot id", hint="give at least its first 8 hex digits")
    p = vault.practice(practice)
    s = db.snapshots
    with vault.engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.select(s.c.name).where(
            s.c.practice_id == p.id, s.c.name.startswith(prefix, autoescape=True)).limit(2))]
    if not names:
        raise NotFound(f"no snapshot {prefix} in practice {practice}")
    if len(names) > 1:
        raise UserError(f"snapshot id {prefix} is ambiguous", hint="give more of its hex digits")
    return names[0]


def set_hold(vault: Vault, practice: str, snapshot: str, held: bool, reason: str, *, actor: str) -> None:
    """Put a legal hold on a kept snapshot (``reason``: a case reference, required) or release
    it. A held snapshot is never forgotten by retention nor removed by an admin, so neither are
    the packs it references; both changes are audited with their reason."""
    reason = reason.strip()[:200]
    if held and not reason:
        raise UserError("a legal hold needs a reason (a case or request reference)")
    with db.write(vault.engine) as conn:
        p = vault.practice(practice, conn)
        db.lock_practice(conn, p.id)
        s = db.snapshots
        row = conn.execute(sa.select(s.c.state, s.c.hold).where(s.c.practice_id == p.id, s.c.name == snapshot)).first()
        if row is None:
            raise NotFound(f"snapshot {snapshot[:64]!r} not found")
        if held and row.state != "kept":
            raise UserError(f"snapshot {snapshot[:64]} was already forgotten by retention: it cannot be held")
        if not held and row.hold is None:
            raise UserError(f"snapshot {snapshot[:64]} is not under legal hold")
        conn.execute(s.update().where(s.c.practice_id == p.id, s.c.name == snapshot).values(
            hold=reason if held else None, held_at=vault.now() if held else None))
        detail = {"name": snapshot, "reason": reason} if held else {"name": snapshot, "reason": reason,
                                                                    "held_for": row.hold}
        vault.audit(conn, actor, "snapshot.hold" if held else "snapshot.release-hold", practice, "ok", detail)
    vault.checkpoint(conn)


def report_run(vault: Vault, practice: Practice, outcome: str, error_class: str | None,
               counts: dict[str, int], *, actor: str) -> None:
    if outcome not in RUN_OUTCOMES:
        raise UserError(f"outcome must be one of {', '.join(RUN_OUTCOMES)}")
    with db.write(vault.engine) as conn:
        conn.execute(db.runs.insert().values(
            practice_id=practice.id, received=vault.now(), outcome=outcome,
            error_class=(error_class or None) and error_class[:64], counts=json.dumps(counts)))
        vault.audit(conn, actor, "run.report", practice.name, "ok", {"outcome": outcome, "error_class": error_class})
    vault.checkpoint(conn)


def status(vault: Vault, practice: Practice) -> dict[str, Any]:
    now = vault.now()
    with vault.engine.connect() as conn:
        last = conn.execute(sa.select(db.snapshots).where(
            db.snapshots.c.practice_id == practice.id, db.snapshots.c.state == "kept"
        ).order_by(db.snapshots.c.received.desc()).limit(1)).first()
        last_clean = conn.execute(sa.select(db.snapshots.c.name, db.snapshots.c.received).where(
            db.snapshots.c.practice_id == practice.id, db.snapshots.c.state == "kept",
            sa.or_(db.snapshots.c.verdict == "clean", db.snapshots.c.false_positive.is_(True)),
        ).order_by(db.snapshots.c.received.desc()).limit(1)).first()
        run = conn.execute(sa.select(db.runs).where(db.runs.c.practice_id == practice.id)
                           .order_by(db.runs.c.id.desc()).limit(1)).first()
        drill = latest_drill(conn, practice.id)
        count = conn.execute(sa.select(sa.func.count()).select_from(db.snapshots).where(
            db.snapshots.c.practice_id == practice.id, db.snapshots.c.state == "kept")).scalar_one()
        incident = _incident(conn, practice)
    return {
        "practice": practice.name,
        "server_time": now,
        "snapshots": int(count),
        "last_snapshot": last.name if last else None,
        "last_snapshot_at": last.received if last else None,
        "last_snapshot_age_seconds": (now - last.received) if last else None,
        "last_verdict": last.verdict if last else None,
        "last_clean_snapshot": last_clean.name if last_clean else None,
        "last_clean_at": last_clean.received if last_clean else None,
        "frozen": practice.frozen,
        "frozen_reason": practice.frozen_reason,
        "closed_at": practice.closed_at,
        "data_location": vault.config.data_location(),
        "erased_at": practice.erased_at,
        "used_bytes": practice.used_bytes,
        "quota_bytes": practice.quota_bytes,
        "last_run": {"received": run.received, "outcome": run.outcome, "error_class": run.error_class} if run else None,
        "last_drill": drill_json(drill),
        "policy": practice.policy.to_dict(),
        "incident": incident,
    }


def _incident(conn: Any, practice: Practice) -> dict[str, Any]:
    """The practice's incident state, readable by its agents (server times, no names): frozen or
    not, when it was last released by an admin and when the newest suspicious snapshot not marked
    false positive was received. An agent clears its own local damage ledger only when the vault
    released after its suspicious snapshot; the vault's freeze stays the authority."""
    s, a = db.snapshots, db.audit
    suspicious = conn.execute(sa.select(sa.func.max(s.c.received)).where(
        s.c.practice_id == practice.id, s.c.verdict == "suspicious", s.c.false_positive.is_(False),
        s.c.state == "kept")).scalar()
    released = conn.execute(sa.select(sa.func.max(a.c.time)).where(
        a.c.practice == practice.name, a.c.action == "release", a.c.outcome == "ok")).scalar()
    frozen_at = conn.execute(sa.select(db.practices.c.frozen_at).where(db.practices.c.id == practice.id)).scalar()
    return {"frozen": practice.frozen, "frozen_at": frozen_at if practice.frozen else None,
            "released_at": released, "last_suspicious_at": suspicious}


def timeline(vault: Vault, practice: Practice, limit: int = 500) -> list[dict[str, Any]]:
    with vault.engine.connect() as conn:
        rows = conn.execute(sa.select(db.snapshots).where(db.snapshots.c.practice_id == practice.id)
                            .order_by(db.snapshots.c.received.desc()).limit(limit)).all()
    return [{"name": r.name, "received": r.received, "client_time": r.client_time, "verdict": r.verdict,
             "false_positive": bool(r.false_positive), "state": r.state, "hold": r.hold,
             "detection": json.loads(r.detection or "{}"), "stats": json.loads(r.stats or "{}")} for r in rows]


def admin_remove(vault: Vault, practice: Practice, h: Handle, *, actor: str) -> None:
    """Admin deletion of one object; refused while frozen, under the minimum age, or if referenced."""
    from rempart.vault.gc import referenced_packs

    now = vault.now()
    vault.stat_cache.discard((practice.id, h.type, h.name))
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, practice.id)
        p = vault.practice(practice.name, conn)
        row = vault.object_row(conn, p.id, h.type, h.name)
        if row is None or row.state not in ("live", "superseded"):
            raise NotFound(f"{h} not found")
        if p.frozen:
            raise PermissionDenied(f"practice {p.name} is under incident freeze: nothing may be deleted")
        if now - row.created < p.policy.min_age_days * 86400:
            raise PermissionDenied(f"{h} is younger than the retention minimum age")
        if h.type is FileType.SNAPSHOT and conn.execute(sa.select(db.snapshots.c.hold).where(
                db.snapshots.c.practice_id == p.id, db.snapshots.c.name == h.name)).scalar() is not None:
            raise PermissionDenied(f"{h} is under legal hold")
        if h.type is FileType.DATA and h.name in referenced_packs(conn, p.id, [h.name]):
            raise PermissionDenied(f"{h} holds blobs that a kept snapshot references")
        vault.backend(p).remove(h)
        conn.execute(db.objects.update().where(
            db.objects.c.practice_id == p.id, db.objects.c.type == h.type.value, db.objects.c.name == h.name
        ).values(state="deleted"))
        conn.execute(db.practices.update().where(db.practices.c.id == p.id)
                     .values(used_bytes=db.practices.c.used_bytes - row.size))
        if h.type is FileType.DATA:
            conn.execute(db.blobs.delete().where(db.blobs.c.practice_id == p.id, db.blobs.c.pack == h.name))
        if h.type is FileType.SNAPSHOT:
            conn.execute(db.snapshots.update().where(db.snapshots.c.practice_id == p.id,
                                                     db.snapshots.c.name == h.name).values(state="forgotten"))
        vault.audit(conn, actor, f"remove.{h.type.value}", p.name, "ok", {"name": h.name})
    vault.stat_cache.discard((practice.id, h.type, h.name))
    vault.checkpoint(conn)

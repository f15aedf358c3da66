"""Closing a practice at the end of its contract, and erasing its data after a grace period.

A practice that leaves (it changes providers, or it closes) must get its data back, and then
the provider must destroy it and be able to show that it did (GDPR art. 17 and 28, HDS
reversibility). The vault holds no key, so destroying the ciphertext is its whole part; the
practice destroys its recovery kit, which makes every copy unreadable (crypto-shredding).

* :func:`close` (``rempart vault practice close NAME --reason ...``) revokes every token of the
  practice and its unused enrollment codes, records when and why, and tells the practice's
  contacts, its IT provider and the webhooks at once (the watch then leaves it alone, so a
  closing nobody asked for must not go unnoticed). No backup can arrive any
  more (a new backup token is refused); a **restore** token can still be issued, for the
  practice to take its data with ``rempart mirror`` during the grace period.
* The grace period is the practice's retention minimum age (``min_age_days``) counted from the
  closing. Until it ends, nothing changes; :func:`reopen` undoes the closing.
* After it, each GC pass forgets every snapshot except those under legal hold (a hold outlasts
  the contract), collects their packs as usual, then marks the index files and the config for
  deletion too. An incident freeze still stops every deletion, and S3 Object Lock keeps each
  object until its date (no closed practice's lock is renewed once it is marked).
* When no object of the practice is left in storage, the pass records ``erased_at`` and appends
  a ``practice.erased`` audit record: the destruction report (objects and bytes deleted, first
  and last deletion, the closing reason), chained with the rest of the trail, so ``rempart vault
  audit export`` carries it to the practice.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from rempart.core.clock import to_iso
from rempart.core.errors import UserError
from rempart.vault import db
from rempart.vault.service import Practice, Vault
from rempart.vault.watch.engine import Watch

#: object states still holding bytes in storage
STORED = ("live", "superseded", "deleting", "retained")


def close(vault: Vault, name: str, reason: str, *, actor: str) -> float:
    """Close the practice; returns when its data may be erased (server time)."""
    reason = reason.strip()[:200]
    if not reason:
        raise UserError("closing a practice needs a reason (contract end, request reference)")
    now = vault.now()
    with db.write(vault.engine) as conn:
        p = vault.practice(name, conn)
        db.lock_practice(conn, p.id)
        if p.closed_at is not None:
            raise UserError(f"practice {name} was closed already")
        revoked = conn.execute(db.tokens.update().where(
            db.tokens.c.practice_id == p.id, db.tokens.c.revoked.is_(False)).values(revoked=True)).rowcount
        conn.execute(db.enroll_codes.update().where(
            db.enroll_codes.c.practice_id == p.id, db.enroll_codes.c.used_at.is_(None)).values(expires=now))
        conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(
            closed_at=now, closed_reason=reason))
        erase_after = now + p.policy.min_age_days * 86400
        stored = _stored(conn, p)
        vault.audit(conn, actor, "practice.close", name, "ok",
                    {"reason": reason, "tokens_revoked": revoked, "erase_after": erase_after,
                     "stored_objects": stored[0], "stored_bytes": stored[1]})
        # the practice and its IT provider are told at once: closing also silences the watch,
        # so a closing nobody asked for (a stolen admin token) must not go unnoticed
        row = conn.execute(sa.select(db.practices).where(db.practices.c.id == p.id)).one()
        Watch(vault, vault.config.watch).notice(conn, row, "closed", {"erase_after": to_iso(
            datetime.fromtimestamp(erase_after, UTC))})
    vault.auth_cache.clear()
    vault.checkpoint(conn)
    return erase_after


def reopen(vault: Vault, name: str, reason: str, *, actor: str) -> None:
    """Undo a closing before the data is gone (new tokens must then be issued)."""
    with db.write(vault.engine) as conn:
        p = vault.practice(name, conn)
        if p.closed_at is None:
            raise UserError(f"practice {name} is not closed")
        if erasing(vault, p):
            raise UserError(f"practice {name}: its grace period is over and its erasure has begun; "
                            "it cannot be reopened")
        conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(closed_at=None, closed_reason=None))
        vault.audit(conn, actor, "practice.reopen", name, "ok", {"reason": reason.strip()[:200]})
    vault.checkpoint(conn)


def erasing(vault: Vault, p: Practice) -> bool:
    """True once the practice is closed and its grace period is over."""
    return p.closed_at is not None and vault.now() >= p.closed_at + p.policy.min_age_days * 86400


def mark_the_rest(vault: Vault, p: Practice, *, actor: str) -> bool:
    """After GC forgot every unheld snapshot of an erasing practice: mark its index files and
    config for deletion once no snapshot is kept. Returns False while a held snapshot stays."""
    o = db.objects
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, p.id)
        if conn.execute(sa.select(db.snapshots.c.name).where(
                db.snapshots.c.practice_id == p.id, db.snapshots.c.state == "kept").limit(1)).first():
            return False
        marked = conn.execute(o.update().where(
            o.c.practice_id == p.id, o.c.state.in_(("live", "superseded")), o.c.type.in_(("index", "config")))
            .values(state="deleting")).rowcount
        if marked:
            vault.audit(conn, actor, "practice.erase", p.name, "ok", {"marked": marked})
    vault.checkpoint(conn)
    return True


def _stored(conn: sa.engine.Connection, p: Practice) -> tuple[int, int]:
    o = db.objects
    n, size = conn.execute(sa.select(sa.func.count(), sa.func.sum(o.c.size)).where(
        o.c.practice_id == p.id, o.c.state.in_(STORED))).one()
    return int(n or 0), int(size or 0)


def finish_if_erased(vault: Vault, p: Practice, *, actor: str) -> bool:
    """Record the erasure and its report once nothing of ``p`` is left in storage."""
    with db.write(vault.engine) as conn:
        if p.erased_at is not None or _stored(conn, p)[0]:
            return False
        reason = conn.execute(sa.select(db.practices.c.closed_reason).where(db.practices.c.id == p.id)).scalar()
        now = vault.now()
        conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(erased_at=now, used_bytes=0))
        vault.audit(conn, actor, "practice.erased", p.name, "ok", {
            "closed_at": p.closed_at, "closing_reason": reason, "erased_at": now, "objects_left": 0,
            "note": "every object the vault stored for this practice is deleted from its storage; the "
                    "stored_objects and stored_bytes of the practice.close record are what was erased"})
    vault.checkpoint(conn)
    return True

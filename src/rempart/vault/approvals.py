"""Two-person rule for the admin operations that can lead to data being deleted.

With ``[limits] two_person = true``, an admin token's request (over the API) to change a
retention policy, release an incident freeze or a legal hold, close a practice or delete an
object does nothing yet: it is recorded as a pending approval (HTTP 202, audited
``approval.request``), and it is carried out only when a *second* admin token approves it
(``POST /v1/admin/approvals/{id}/approve``; the requesting token is refused). A request expires
after :data:`TTL` seconds; either admin may reject it. The operation then runs with the actor
``token:<requester>+token:<approver>`` in the audit trail, which also records the grant.

The dashboard follows the same rule: an administrator's release is a request, which another
administrator approves on its Approvals page (actors ``user:<a>+user:<b>``). Out of its reach,
by design: the vault's own CLI, run on the vault host by whoever administers it (the database
and the storage are there too).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from rempart.core.errors import NotFound, PermissionDenied, RempartError, UserError
from rempart.storage.base import FileType, Handle
from rempart.vault import closing, db
from rempart.vault import practices as ops
from rempart.vault.config import RetentionPolicy
from rempart.vault.service import Vault

#: seconds a request waits for its second admin
TTL = 86400.0


def _policy(v: Vault, practice: str, args: dict[str, Any], actor: str) -> Any:
    return ops.set_policy(v, practice, RetentionPolicy.from_dict(args["policy"]), actor=actor)


def _release(v: Vault, practice: str, args: dict[str, Any], actor: str) -> Any:
    return ops.freeze(v, practice, False, str(args.get("reason", "")), actor=actor)


def _release_hold(v: Vault, practice: str, args: dict[str, Any], actor: str) -> Any:
    return ops.set_hold(v, practice, str(args["snapshot"]), False, str(args.get("reason", "")), actor=actor)


def _close(v: Vault, practice: str, args: dict[str, Any], actor: str) -> Any:
    return closing.close(v, practice, str(args["reason"]), actor=actor)


def _delete(v: Vault, practice: str, args: dict[str, Any], actor: str) -> Any:
    return ops.admin_remove(v, v.practice(practice), Handle(FileType(args["type"]), str(args["name"])), actor=actor)


ACTIONS: dict[str, Callable[[Vault, str, dict[str, Any], str], Any]] = {
    "policy": _policy, "release": _release, "release-hold": _release_hold, "close": _close, "delete": _delete,
}


def required(vault: Vault) -> bool:
    return vault.config.limits.two_person


def request(vault: Vault, actor: str, action: str, practice: str, args: dict[str, Any]) -> dict[str, Any]:
    """Record a pending request; returns what the API answers (202)."""
    if action not in ACTIONS:  # pragma: no cover - routes name their action
        raise UserError(f"unknown action {action!r}")
    vault.practice(practice)  # NotFound now rather than at approval
    now = vault.now()
    aid = secrets.token_hex(8)
    with db.write(vault.engine) as conn:
        conn.execute(db.approvals.insert().values(
            id=aid, created=now, expires=now + TTL, requested_by=actor, action=action, practice=practice,
            args=json.dumps(args, sort_keys=True), state="pending"))
        vault.audit(conn, actor, "approval.request", practice, "ok", {"approval": aid, "action": action, **args})
    vault.checkpoint(conn)
    return {"approval": aid, "action": action, "practice": practice, "state": "pending", "expires": now + TTL}


def pending(vault: Vault) -> list[dict[str, Any]]:
    a = db.approvals
    with vault.engine.connect() as conn:
        rows = conn.execute(sa.select(a).where(a.c.state == "pending", a.c.expires > vault.now())
                            .order_by(a.c.created)).all()
    return [{"approval": r.id, "action": r.action, "practice": r.practice, "args": json.loads(r.args),
             "requested_by": r.requested_by, "created": r.created, "expires": r.expires} for r in rows]


def decide(vault: Vault, aid: str, actor: str, *, approve: bool) -> dict[str, Any]:
    """Approve (carry out) or reject a pending request. A token cannot approve its own."""
    a = db.approvals
    with db.write(vault.engine) as conn:
        row = conn.execute(sa.select(a).where(a.c.id == aid[:32])).first()
        if row is None or row.state != "pending" or row.expires <= vault.now():
            raise NotFound(f"no pending approval {aid[:32]!r} (unknown, decided or expired)")
        if approve and row.requested_by == actor:
            raise PermissionDenied("a second admin must approve this request: the requesting token cannot")
        conn.execute(a.update().where(a.c.id == row.id, a.c.state == "pending").values(
            state="approved" if approve else "rejected", decided_by=actor, decided_at=vault.now()))
        vault.audit(conn, actor, "approval.grant" if approve else "approval.reject", row.practice, "ok",
                    {"approval": row.id, "action": row.action, "requested_by": row.requested_by})
    vault.checkpoint(conn)
    if not approve:
        return {"approval": row.id, "state": "rejected"}
    try:
        result = ACTIONS[row.action](vault, row.practice, json.loads(row.args), f"{row.requested_by}+{actor}")
    except RempartError:  # e.g. the hold was released meanwhile: say so, and keep the record straight
        with db.write(vault.engine) as conn:
            conn.execute(a.update().where(a.c.id == row.id).values(state="failed"))
        raise
    return {"approval": row.id, "state": "approved", "result": result}

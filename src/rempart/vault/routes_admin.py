"""Provider admin routes: practices, tokens, enrollment codes, policies, quotas, freeze and
release, false positives, legal holds, GC, audit. Plus the public enrollment exchange."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rempart.core.errors import RempartError
from rempart.vault import approvals, closing, db
from rempart.vault import audit as audit_mod
from rempart.vault import practices as ops
from rempart.vault.config import RetentionPolicy
from rempart.vault.deps import authenticate, client_ip, refuse, require_admin, vault_of
from rempart.vault.gc import run_gc
from rempart.vault.tokens import Principal

router = APIRouter(tags=["admin"])
PracticeName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", max_length=63)]


class NewPractice(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    quota_bytes: int | None = Field(default=None, ge=0)


class PolicyBody(BaseModel):
    keep_last: int = Field(default=10, ge=0, le=100_000)
    hourly: int = Field(default=24, ge=0, le=100_000)
    daily: int = Field(default=14, ge=0, le=100_000)
    weekly: int = Field(default=8, ge=0, le=100_000)
    monthly: int = Field(default=12, ge=0, le=100_000)
    yearly: int = Field(default=3, ge=0, le=1000)
    min_age_days: float = Field(default=30.0, ge=0, le=36500)


class QuotaBody(BaseModel):
    quota_bytes: int = Field(ge=0, le=2**62)


class Reason(BaseModel):
    reason: str = Field(default="", max_length=200)


class RequiredReason(BaseModel):
    reason: str = Field(min_length=1, max_length=200, description="case or request reference")


SnapshotName = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]


class TokenRequest(BaseModel):
    scope: str = Field(pattern=r"^(backup|restore)$")


class EnrollRequest(BaseModel):
    code: str = Field(min_length=1, max_length=100)


Admin = Annotated[Principal, Depends(require_admin)]


def _second_admin(request: Request, admin: Principal, action: str, practice: str,
                  args: dict[str, Any]) -> JSONResponse | None:
    """Under the two-person rule: record the request and answer 202 (rempart.vault.approvals)."""
    if not approvals.required(vault_of(request)):
        return None
    out = _guard(request, admin, lambda v, actor: approvals.request(v, actor, action, practice, args),
                 practice=practice)
    return JSONResponse(status_code=202, content=out)


def _guard(request: Request, p: Principal, fn: Any, *args: Any, practice: str | None = None, **kw: Any) -> Any:
    try:
        return fn(vault_of(request), *args, actor=p.actor, **kw)
    except RempartError as exc:
        raise refuse(request, exc, actor=p.actor, practice=practice) from None


@router.post("/v1/enroll")
def enroll(request: Request, body: EnrollRequest) -> dict[str, str]:
    """Exchange a single-use enrollment code for a backup token (no other credential needed)."""
    from rempart.vault.app import TooManyRequests

    limiter = request.app.state.limiter
    ip = client_ip(request)
    wait = limiter.blocked(ip, None)
    if wait:
        raise refuse(request, TooManyRequests(wait))
    try:
        practice, token = ops.enroll(vault_of(request), body.code, actor=f"ip:{ip}")
    except RempartError as exc:
        limiter.failed(ip, None)
        raise refuse(request, exc) from None
    return {"practice": practice, "token": token}


@router.get("/v1/admin/practices")
def list_practices(request: Request, admin: Admin) -> list[dict[str, Any]]:
    vault = vault_of(request)
    return [ops.status(vault, p) for p in vault.practices()]


@router.post("/v1/admin/practices", status_code=201)
def add_practice(request: Request, admin: Admin, body: NewPractice) -> dict[str, Any]:
    """Create a practice; its backup and restore tokens are returned once."""
    toks = _guard(request, admin, ops.add_practice, body.name, quota_bytes=body.quota_bytes, practice=body.name)
    return {"name": body.name, "tokens": toks}


@router.get("/v1/admin/practices/{practice}")
def get_practice(request: Request, admin: Admin, practice: PracticeName) -> dict[str, Any]:
    return _guard(request, admin, lambda v, actor: ops.status(v, v.practice(practice)), practice=practice)


@router.put("/v1/admin/practices/{practice}/policy")
def put_policy(request: Request, admin: Admin, practice: PracticeName, body: PolicyBody) -> Any:
    """Set the retention policy (202 and a pending approval under the two-person rule)."""
    pol = RetentionPolicy.from_dict(body.model_dump())
    if (pending := _second_admin(request, admin, "policy", practice, {"policy": pol.to_dict()})) is not None:
        return pending
    _guard(request, admin, ops.set_policy, practice, pol, practice=practice)
    return pol.to_dict()


@router.put("/v1/admin/practices/{practice}/quota")
def put_quota(request: Request, admin: Admin, practice: PracticeName, body: QuotaBody) -> dict[str, int]:
    _guard(request, admin, ops.set_quota, practice, body.quota_bytes, practice=practice)
    return {"quota_bytes": body.quota_bytes}


@router.post("/v1/admin/practices/{practice}/freeze")
def freeze(request: Request, admin: Admin, practice: PracticeName, body: Reason) -> dict[str, bool]:
    _guard(request, admin, ops.freeze, practice, True, body.reason, practice=practice)
    return {"frozen": True}


@router.post("/v1/admin/practices/{practice}/release")
def release(request: Request, admin: Admin, practice: PracticeName, body: Reason) -> Any:
    """Release an incident freeze (audited); retention and GC resume (202 and a pending approval
    under the two-person rule)."""
    if (pending := _second_admin(request, admin, "release", practice, {"reason": body.reason})) is not None:
        return pending
    _guard(request, admin, ops.freeze, practice, False, body.reason, practice=practice)
    return {"frozen": False}


@router.post("/v1/admin/practices/{practice}/snapshots/{name}/false-positive")
def false_positive(request: Request, admin: Admin, practice: PracticeName,
                   name: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> dict[str, bool]:
    _guard(request, admin, ops.mark_false_positive, practice, name, practice=practice)
    return {"false_positive": True}


@router.post("/v1/admin/practices/{practice}/close")
def close_practice(request: Request, admin: Admin, practice: PracticeName, body: RequiredReason) -> Any:
    """End of contract: revoke the practice's tokens; its data is erased by GC after its
    retention minimum age (audited; see rempart.vault.closing; 202 and a pending approval under
    the two-person rule)."""
    if (pending := _second_admin(request, admin, "close", practice, {"reason": body.reason})) is not None:
        return pending
    after = _guard(request, admin, closing.close, practice, body.reason, practice=practice)
    return {"closed": True, "erase_after": after}


@router.post("/v1/admin/practices/{practice}/reopen")
def reopen_practice(request: Request, admin: Admin, practice: PracticeName, body: Reason) -> dict[str, bool]:
    """Undo a closing within its grace period (issue new tokens afterwards)."""
    _guard(request, admin, closing.reopen, practice, body.reason, practice=practice)
    return {"closed": False}


@router.post("/v1/admin/practices/{practice}/snapshots/{name}/hold")
def hold(request: Request, admin: Admin, practice: PracticeName, name: SnapshotName,
         body: RequiredReason) -> dict[str, bool]:
    """Put a legal hold on a kept snapshot: retention never forgets it while held (audited)."""
    _guard(request, admin, ops.set_hold, practice, name, True, body.reason, practice=practice)
    return {"hold": True}


@router.post("/v1/admin/practices/{practice}/snapshots/{name}/release-hold")
def release_hold(request: Request, admin: Admin, practice: PracticeName, name: SnapshotName,
                 body: Reason) -> Any:
    """Release a legal hold; the snapshot falls under the retention policy again (audited; 202
    and a pending approval under the two-person rule)."""
    args = {"snapshot": name, "reason": body.reason}
    if (pending := _second_admin(request, admin, "release-hold", practice, args)) is not None:
        return pending
    _guard(request, admin, ops.set_hold, practice, name, False, body.reason, practice=practice)
    return {"hold": False}


@router.post("/v1/admin/practices/{practice}/enroll-codes", status_code=201)
def new_enroll_code(request: Request, admin: Admin, practice: PracticeName) -> dict[str, Any]:
    code = _guard(request, admin, ops.enroll_code, practice, practice=practice)
    return {"code": code, "ttl_seconds": request.app.state.config.limits.enroll_code_ttl_seconds}


@router.post("/v1/admin/practices/{practice}/tokens", status_code=201)
def new_token(request: Request, admin: Admin, practice: PracticeName, body: TokenRequest) -> dict[str, str]:
    return {"token": _guard(request, admin, ops.new_token, practice, body.scope, practice=practice)}


@router.delete("/v1/admin/tokens/{token_id}", status_code=200)
def revoke_token(request: Request, admin: Admin,
                 token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]) -> dict[str, bool]:
    _guard(request, admin, ops.revoke_token, token_id)
    return {"revoked": True}


@router.post("/v1/admin/practices/{practice}/gc")
def gc_practice(request: Request, admin: Admin, practice: PracticeName) -> dict[str, Any]:
    """Apply retention and collect garbage for one practice now."""
    rep = _guard(request, admin, lambda v, actor: run_gc(v, v.practice(practice), actor=actor), practice=practice)
    return {"practice": rep.practice, "frozen": rep.frozen, "forgotten": len(rep.forgotten),
            "deleted_packs": len(rep.deleted_packs), "freed_bytes": rep.freed_bytes,
            "renewed_locks": rep.renewed_locks}


@router.get("/v1/admin/approvals")
def list_approvals(request: Request, admin: Admin) -> list[dict[str, Any]]:
    """Pending requests under the two-person rule."""
    return approvals.pending(vault_of(request))


@router.post("/v1/admin/approvals/{approval}/{decision}")
def decide_approval(request: Request, admin: Admin,
                    approval: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
                    decision: Annotated[str, Path(pattern=r"^(approve|reject)$")]) -> dict[str, Any]:
    """A second admin token carries out (or rejects) a pending request; not the requesting one."""
    return _guard(request, admin, lambda v, actor: approvals.decide(v, approval, actor, approve=decision == "approve"))


@router.get("/v1/admin/audit")
def read_audit(request: Request, admin: Admin, after: Annotated[int, Query(ge=0)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    with vault_of(request).engine.connect() as conn:
        rows = conn.execute(sa.select(db.audit).where(db.audit.c.seq > after).order_by(db.audit.c.seq)
                            .limit(limit)).all()
    return [dict(r._mapping) for r in rows]


@router.get("/v1/admin/audit/verify")
def verify_audit(request: Request, admin: Admin) -> dict[str, Any]:
    v = vault_of(request)
    res = audit_mod.verify(v.engine, v.config.audit_checkpoint)
    return {"ok": res.ok, "count": res.count, "problems": list(res.problems)}


@router.get("/v1/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """The calling token's id, scope and practice (never the token)."""
    p = authenticate(request, None)
    return {"token_id": p.token_id, "scope": p.scope, "practice": p.practice}

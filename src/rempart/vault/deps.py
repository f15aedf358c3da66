"""Authentication and authorisation for routes: bearer token -> Principal, scope checks, audit
of every refusal, and the auth-failure rate limit."""

from __future__ import annotations

import hmac

from fastapi import Request

from rempart.core.errors import AuthenticationError, PermissionDenied, RempartError
from rempart.vault import tokens
from rempart.vault.service import Practice, Vault
from rempart.vault.tokens import Principal


def vault_of(request: Request) -> Vault:
    v: Vault = request.app.state.vault
    return v


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def refuse(request: Request, exc: RempartError, *, actor: str | None = None, practice: str | None = None,
           action: str | None = None) -> RempartError:
    """Audit a refused request and return the exception to raise."""
    route = request.scope.get("route")
    act = action or f"{request.method} {getattr(route, 'path', request.url.path)}"
    vault_of(request).audit_now(actor or f"ip:{client_ip(request)}", act[:64], practice, exc.reference[:32],
                                {"message": exc.message[:200]})
    return exc


def authenticate(request: Request, practice: str | None) -> Principal:
    from rempart.vault.app import TooManyRequests

    limiter = request.app.state.limiter
    ip = client_ip(request)
    wait = limiter.blocked(ip, practice)
    if wait:
        raise refuse(request, TooManyRequests(wait), practice=practice)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("a vault token is needed (Authorization: Bearer ...)")
        with vault_of(request).engine.connect() as conn:
            return tokens.authenticate(conn, token.strip())
    except AuthenticationError as exc:
        limiter.failed(ip, practice)
        request.app.state.metrics.auth_failures.inc()
        raise refuse(request, exc, practice=practice) from None


def _authenticate_cached(request: Request, practice: str) -> tuple[Principal, Practice | None]:
    """Like :func:`authenticate` plus the token's own practice, in one query, or from the vault's
    short-lived cache keyed by the token's SHA-256 (only successes are cached; failures still go
    to the database, the failure limiter and the audit trail)."""
    from rempart.vault.app import TooManyRequests

    limiter = request.app.state.limiter
    ip = client_ip(request)
    wait = limiter.blocked(ip, practice)
    if wait:
        raise refuse(request, TooManyRequests(wait), practice=practice)
    vault = vault_of(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        hashed = tokens.digest(token)
        hit = vault.auth_cache.get(hashed)
        if hit is not None and hmac.compare_digest(hashed, hit[0]):
            return hit[1], hit[2]
    try:
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("a vault token is needed (Authorization: Bearer ...)")
        with vault.engine.connect() as conn:
            p, row, hashed = tokens.authenticate_with_practice(conn, token)
    except AuthenticationError as exc:
        limiter.failed(ip, practice)
        request.app.state.metrics.auth_failures.inc()
        raise refuse(request, exc, practice=practice) from None
    pr = vault.practice_from_row(row) if row is not None else None
    vault.auth_cache.put(hashed, (hashed, p, pr))
    return p, pr


def require_admin(request: Request) -> Principal:
    p = authenticate(request, None)
    if p.scope != "admin" or p.practice_id is not None:
        raise refuse(request, PermissionDenied("this route needs a provider admin token"), actor=p.actor)
    return p


def require_practice(request: Request, practice: str, scopes: tuple[str, ...],
                     cached: bool = False) -> tuple[Principal, Practice]:
    """The caller must hold one of ``scopes`` for this practice (or be a provider admin, if allowed).

    ``cached`` (hot object routes only): the token and its practice may come from the vault's
    cache (a few seconds old at most: revocation elsewhere, quota, freeze flag)."""
    vault = vault_of(request)
    own: Practice | None = None
    if cached:
        p, own = _authenticate_cached(request, practice)
    else:
        p = authenticate(request, practice)
    if p.practice_id is None:
        if p.scope != "admin" or "admin" not in scopes:
            raise refuse(request, PermissionDenied("this token may not use this route"), actor=p.actor,
                         practice=practice)
    elif p.practice != practice:
        request.app.state.limiter.failed(client_ip(request), practice)
        raise refuse(request, PermissionDenied("this token belongs to another practice"), actor=p.actor,
                     practice=practice)
    elif p.scope not in scopes:
        raise refuse(request, PermissionDenied(f"a {p.scope} token may not use this route"), actor=p.actor,
                     practice=practice)
    if own is not None:
        return p, own
    try:
        return p, vault.practice(practice)
    except RempartError as exc:
        raise refuse(request, exc, actor=p.actor, practice=practice) from None

"""Authentication and authorisation for routes: bearer token -> Principal, scope checks, audit
of every refusal, and the auth-failure rate limit."""

from __future__ import annotations

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


def require_admin(request: Request) -> Principal:
    p = authenticate(request, None)
    if p.scope != "admin" or p.practice_id is not None:
        raise refuse(request, PermissionDenied("this route needs a provider admin token"), actor=p.actor)
    return p


def require_practice(request: Request, practice: str, scopes: tuple[str, ...]) -> tuple[Principal, Practice]:
    """The caller must hold one of ``scopes`` for this practice (or be a provider admin, if allowed)."""
    p = authenticate(request, practice)
    vault = vault_of(request)
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
    try:
        return p, vault.practice(practice)
    except RempartError as exc:
        raise refuse(request, exc, actor=p.actor, practice=practice) from None

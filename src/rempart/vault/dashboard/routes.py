"""Dashboard HTTP routes under ``/ui``: login/logout, practice list, one practice's timeline,
incident freeze and release, audit log. Server-rendered (Jinja2, autoescaped), no JavaScript
needed. Every POST checks the CSRF token; every page checks the session and the user's role."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rempart.core.errors import AuthenticationError, NotFound, PermissionDenied, RempartError
from rempart.vault import approvals, db
from rempart.vault import practices as vp
from rempart.vault.dashboard import auth, totp
from rempart.vault.dashboard.i18n import pick, translator
from rempart.vault.dashboard.views import Views

router = APIRouter(prefix="/ui", include_in_schema=False)

LOGIN_CSRF = "rempart_login_csrf"
LANG_COOKIE = "rempart_lang"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    pass


def _ui(request: Request) -> Any:
    return request.app.state.dashboard


def session_cookie(request: Request) -> str:
    return _ui(request).cookie_name


def current(request: Request) -> auth.Session | None:
    sid = request.cookies.get(session_cookie(request), "")
    vault = request.app.state.vault
    with vault.engine.connect() as conn:
        return auth.load_session(conn, sid, vault.now())


def require(request: Request) -> auth.Session:
    s = current(request)
    if s is None:
        raise LoginRequired()
    return s


def lang_of(request: Request, user: auth.User | None = None) -> str:
    return pick(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"),
                user.lang if user else None)


def render(request: Request, name: str, status: int = 200, session: auth.Session | None = None,
           **ctx: Any) -> HTMLResponse:
    lang = lang_of(request, session.user if session else None)
    ui = _ui(request)
    html = ui.env.get_template(name).render(
        t=translator(lang), lang=lang, user=session.user if session else None,
        csrf=session.csrf if session else ctx.pop("login_csrf", ""), **ctx)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(request: Request, status: int, key: str, session: auth.Session | None) -> HTMLResponse:
    return render(request, "error.html", status=status, session=session, message_key=key)


async def check_csrf(request: Request, expected: str) -> dict[str, str]:
    form = await request.form()
    data = {k: v for k, v in form.items() if isinstance(v, str)}
    if not auth.csrf_ok(expected, data.get("csrf")):
        request.app.state.vault.audit_now(f"ip:{request.client.host if request.client else '?'}", "ui.csrf", None,
                                          "csrf-refused", {"path": request.url.path[:100]})
        raise PermissionDenied("csrf")
    return data


@router.get("/login")
def login_form(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    resp = render(request, "login.html", login_csrf=token, failed=False)
    resp.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", secure=_ui(request).secure, path="/ui")
    return resp


@router.post("/login")
async def login(request: Request) -> Response:
    vault = request.app.state.vault
    limiter = _ui(request).limiter
    ip = request.client.host if request.client else "unknown"
    form = await request.form()
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))
    code = str(form.get("code", ""))[:16]
    if not auth.csrf_ok(request.cookies.get(LOGIN_CSRF, ""), str(form.get("csrf", ""))):
        vault.audit_now(f"ip:{ip}", "ui.login", None, "csrf-refused", {"user": username})
        return error_page(request, 403, "error.csrf", None)
    if limiter.blocked(ip, username.lower()):
        vault.audit_now(f"ip:{ip}", "ui.login", None, "rate-limited", {"user": username})
        resp = render(request, "login.html", status=429, login_csrf=request.cookies.get(LOGIN_CSRF, ""),
                      failed=False, limited=True)
        resp.headers["Retry-After"] = str(int(limiter.window))
        return resp
    try:
        with vault.engine.connect() as conn:
            user = auth.check_login(conn, username, password)
        with db.write(vault.engine) as conn:  # the one-time code, once the password is right
            totp.check(conn, user.username, code, vault.now(), required=_ui(request).config.require_totp)
    except AuthenticationError as exc:
        limiter.failed(ip, username.lower())
        vault.audit_now(f"ip:{ip}", "ui.login", None, "authentication-error", {"user": username, "why": exc.message})
        return render(request, "login.html", status=401, login_csrf=request.cookies.get(LOGIN_CSRF, ""),
                      failed=True)
    with vault.engine.begin() as conn:
        sid, _csrf = auth.new_session(conn, user, vault.now(), _ui(request).config.session_hours * 3600)
        vault.audit(conn, user.actor, "ui.login", None, "ok", {"ip": ip})
    vault.checkpoint(conn)
    ok = RedirectResponse("/ui/practices", status_code=303)
    ok.set_cookie(session_cookie(request), sid, httponly=True, samesite="strict", secure=_ui(request).secure,
                    path="/ui", max_age=int(_ui(request).config.session_hours * 3600))
    ok.delete_cookie(LOGIN_CSRF, path="/ui")
    return ok


@router.post("/logout")
async def logout(request: Request) -> Response:
    s = require(request)
    try:
        await check_csrf(request, s.csrf)
    except PermissionDenied:
        return error_page(request, 403, "error.csrf", s)
    vault = request.app.state.vault
    with vault.engine.begin() as conn:
        auth.end_session(conn, request.cookies.get(session_cookie(request), ""))
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(session_cookie(request), path="/ui")
    return resp


@router.get("/lang/{code}")
def set_lang(request: Request, code: str) -> Response:
    back = request.headers.get("referer", "")
    target = "/ui/practices"
    if back:
        from urllib.parse import urlsplit

        parts = urlsplit(back)
        if parts.netloc == request.url.netloc and parts.path.startswith("/ui/") and "/lang/" not in parts.path:
            target = parts.path
    resp = RedirectResponse(target, status_code=303)
    if code in ("fr", "en"):
        resp.set_cookie(LANG_COOKIE, code, samesite="strict", secure=_ui(request).secure, path="/ui",
                        max_age=365 * 86400)
    return resp


@router.get("/")
def home(request: Request) -> Response:
    return RedirectResponse("/ui/practices", status_code=303)


@router.get("/practices")
def practices_page(request: Request) -> Response:
    s = require(request)
    lang = lang_of(request, s.user)
    views: Views = _ui(request).views
    return render(request, "practices.html", session=s, rows=views.practices(s.user, lang))


@router.get("/practices/{name}")
def practice_page(request: Request, name: str, done: str = "") -> Response:
    s = require(request)
    lang = lang_of(request, s.user)
    views: Views = _ui(request).views
    try:
        p = views.practice(s.user, name, lang)
    except (NotFound, RempartError):
        return error_page(request, 404, "error.not_found", s)
    can_release = s.user.is_admin or _ui(request).config.provider_can_release
    return render(request, "practice.html", session=s, p=p, can_release=can_release,
                  done=done if done in ("frozen", "released", "requested") else "")


@router.post("/practices/{name}/{action}")
async def practice_action(request: Request, name: str, action: str) -> Response:
    s = require(request)
    try:
        data = await check_csrf(request, s.csrf)
    except PermissionDenied:
        return error_page(request, 403, "error.csrf", s)
    vault = request.app.state.vault
    views: Views = _ui(request).views
    try:
        with vault.engine.connect() as conn:
            views.practice_row(conn, s.user, name)
    except (NotFound, RempartError):
        vault.audit_now(s.user.actor, f"ui.{action[:16]}", None, "not-found", {"practice": name[:64]})
        return error_page(request, 404, "error.not_found", s)
    reason = (data.get("reason") or "").strip()[:200]
    if action == "freeze":
        vp.freeze(vault, name, True, reason or f"frozen from the dashboard by {s.user.username}", actor=s.user.actor)
        done = "frozen"
    elif action == "release":
        if not (s.user.is_admin or _ui(request).config.provider_can_release):
            vault.audit_now(s.user.actor, "release", name, "permission-denied", {"via": "dashboard"})
            return error_page(request, 403, "error.forbidden", s)
        reason = reason or f"released from the dashboard by {s.user.username}"
        if approvals.required(vault):  # two-person rule: a second administrator approves it
            approvals.request(vault, s.user.actor, "release", name, {"reason": reason})
            return RedirectResponse(f"/ui/practices/{name}?done=requested", status_code=303)
        vp.freeze(vault, name, False, reason, actor=s.user.actor)
        done = "released"
    else:
        return error_page(request, 404, "error.not_found", s)
    return RedirectResponse(f"/ui/practices/{name}?done={done}", status_code=303)


@router.get("/approvals")
def approvals_page(request: Request, done: str = "") -> Response:
    """Pending two-person requests (administrators only; rempart.vault.approvals)."""
    s = require(request)
    if not s.user.is_admin:
        return error_page(request, 403, "error.forbidden", s)
    return render(request, "approvals.html", session=s, rows=approvals.pending(request.app.state.vault),
                  done=done if done in ("approved", "rejected") else "")


@router.post("/approvals/{approval}/{decision}")
async def approval_decision(request: Request, approval: str, decision: str) -> Response:
    s = require(request)
    try:
        await check_csrf(request, s.csrf)
    except PermissionDenied:
        return error_page(request, 403, "error.csrf", s)
    if not s.user.is_admin or decision not in ("approve", "reject"):
        return error_page(request, 403, "error.forbidden", s)
    vault = request.app.state.vault
    try:
        approvals.decide(vault, approval, s.user.actor, approve=decision == "approve")
    except PermissionDenied:
        vault.audit_now(s.user.actor, "approval.grant", None, "own-request", {"approval": approval[:32]})
        return error_page(request, 403, "error.own_request", s)
    except NotFound:
        return error_page(request, 404, "error.not_found", s)
    return RedirectResponse(f"/ui/approvals?done={'approved' if decision == 'approve' else 'rejected'}",
                            status_code=303)


@router.get("/audit")
def audit_page(request: Request, before: int | None = None) -> Response:
    s = require(request)
    views: Views = _ui(request).views
    rows = views.audit(s.user, before)
    return render(request, "audit.html", session=s, rows=rows, older=rows[-1]["seq"] if len(rows) == 200 else None)

"""The vault's ASGI application factory.

``create_app(config, clock=...)`` builds everything from a :class:`VaultConfig`; the running
objects hang off ``app.state`` (``vault``, ``metrics``, ``limiter``) so later modules (alerts,
dashboard) can add routers with ``app.include_router`` and reuse the same database and clock.
Errors from the exception tree become JSON ``{"error": reference, "message": ...}`` with a
status code that the client maps back to the same class.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rempart import __version__
from rempart.core.clock import Clock, SystemClock
from rempart.core.errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    IntegrityError,
    MissingBlobs,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RempartError,
    StorageFull,
    TransientError,
    UserError,
)
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import VaultConfig
from rempart.vault.limits import AuthFailureLimiter
from rempart.vault.metrics import CONTENT_TYPE, Metrics
from rempart.vault.service import Vault

log = logging.getLogger("rempart.vault")

STATUS: list[tuple[type[RempartError], int]] = [
    (MissingBlobs, 409),
    (AlreadyExists, 409),
    (AuthenticationError, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (QuotaExceeded, 507),
    (StorageFull, 507),
    (IntegrityError, 422),
    (UserError, 400),
    (TransientError, 503),
    (BackendError, 503),
]


class TooManyRequests(RempartError):
    """Too many failed authentications; wait and retry."""

    reference = "rate-limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed authentications from this address; wait before retrying")
        self.retry_after = retry_after


class RequestTooLarge(UserError):
    """The request body exceeds the vault's maximum request size."""

    reference = "request-too-large"


def status_of(exc: RempartError) -> int:
    if isinstance(exc, TooManyRequests):
        return 429
    if isinstance(exc, RequestTooLarge):
        return 413
    if exc.reference == "range-not-satisfiable":
        return 416
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def error_response(exc: RempartError) -> JSONResponse:
    body: dict[str, Any] = exc.to_dict()
    headers = {}
    if isinstance(exc, MissingBlobs):
        body["missing"] = exc.missing
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(int(exc.retry_after + 0.999))
    reason = getattr(exc, "reason", None)
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status_of(exc), headers=headers)


class _CountRequests:
    """Counts requests by method, route and status. A plain ASGI middleware, not
    ``@app.middleware("http")``: that one passes every chunk of a request body through a task
    group and a memory stream, a large share of the vault's CPU per uploaded MiB."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_status)
        if status:  # an unhandled error propagates (and is not counted), as before
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()


class VaultAPI(FastAPI):
    """The FastAPI app, with the hot object routes answered first by ``fast`` (see
    :mod:`rempart.vault.fastpath`) when it is set; everything else goes through FastAPI."""

    fast: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and scope["type"] == "http" and await fast(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(config: VaultConfig, clock: Clock | None = None, *, vault: Vault | None = None,
               fast_objects: bool = True) -> VaultAPI:
    """``fast_objects=False`` serves every route through FastAPI (tests compare both paths)."""
    clock = clock or SystemClock()
    vault = vault or open_vault(config, clock)
    app = VaultAPI(
        title="Rempart vault API",
        version=__version__,
        description="Append-only, multi-practice backup vault. See docs/vault-api.md.",
    )
    app.state.vault = vault
    app.state.config = config
    app.state.clock = clock
    app.state.metrics = Metrics(vault)
    lim = config.limits
    app.state.limiter = AuthFailureLimiter(clock, per_ip=lim.auth_failures_per_ip,
                                           per_practice=lim.auth_failures_per_practice,
                                           window=lim.auth_window_seconds)

    @app.exception_handler(RempartError)
    async def _rempart_error(request: Request, exc: RempartError) -> JSONResponse:
        return error_response(exc)

    app.add_middleware(_CountRequests, metrics=app.state.metrics)

    @app.get("/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness check (no authentication)."""
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["meta"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics; needs the admin token unless ``[metrics] public = true``."""
        if not config.metrics_public:
            from rempart.vault.deps import require_admin

            require_admin(request)
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE)

    from rempart.vault import routes_admin, routes_objects

    app.include_router(routes_objects.router)
    app.include_router(routes_admin.router)
    from rempart.vault.watch import include_watch  # alerts, reports, dashboard (/ui), watch metrics

    include_watch(app)
    _include_gc_schedule(app, config, vault)
    if fast_objects:
        from rempart.vault.fastpath import FastObjects

        app.fast = FastObjects(app)
    return app


def _include_gc_schedule(app: FastAPI, config: VaultConfig, vault: Vault) -> None:
    """``app.state.gc``: retention + GC every ``[gc] interval_seconds`` while the app runs."""
    from contextlib import asynccontextmanager

    from rempart.vault.gc_schedule import GcMetrics, GcScheduler

    sched = GcScheduler(vault, GcMetrics(app.state.metrics.registry), interval=config.gc_interval_seconds or 86400,
                        jitter=config.gc_jitter_seconds, scrub_bytes=config.gc_scrub_bytes)
    app.state.gc = sched
    if not config.gc_enabled:
        return
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> Any:
        sched.start()
        try:
            async with previous(a) as state:
                yield state
        finally:
            sched.stop()

    app.router.lifespan_context = lifespan

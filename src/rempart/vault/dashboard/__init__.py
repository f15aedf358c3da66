"""The web dashboard served by the vault under ``/ui`` (see docs/watch.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from rempart.vault.limits import AuthFailureLimiter
from rempart.vault.watch.config import DashboardConfig

HERE = Path(__file__).parent


@dataclass
class UiState:
    config: DashboardConfig
    env: jinja2.Environment
    views: object
    limiter: AuthFailureLimiter
    secure: bool
    cookie_name: str = "rempart_session"


def make_env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def include_dashboard(app: FastAPI, config: DashboardConfig) -> None:
    from rempart.vault.dashboard.routes import LoginRequired, router
    from rempart.vault.dashboard.views import Views

    vcfg = app.state.config
    secure = config.secure_cookies if config.secure_cookies is not None else bool(vcfg.tls.enabled)
    limiter = AuthFailureLimiter(app.state.clock, per_ip=config.login_failures, per_practice=config.login_failures,
                                 window=config.login_window_seconds)
    app.state.dashboard = UiState(config, make_env(), Views(app.state.watch), limiter, secure)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.include_router(router)

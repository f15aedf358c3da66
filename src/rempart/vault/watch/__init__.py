"""The vault's watch: expectations per practice, alerts (late, missing, failed, suspicious,
quota, frozen) with deduplication, escalation and resolution, e-mail and webhook channels,
weekly reports, Prometheus gauges and the background loop. See docs/watch.md.

The vault mounts it with a single call, :func:`include_watch`, which also mounts the dashboard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from rempart.vault.watch.config import DashboardConfig, WatchConfig


def include_watch(app: FastAPI, *, start_loop: bool = True) -> None:
    """Attach the watch service (``app.state.watch``), its metrics, the dashboard routes and
    (if ``start_loop``) the background evaluation loop run for the lifetime of the app."""
    from rempart.vault.watch.metrics import WatchCollector
    from rempart.vault.watch.service import WatchLoop, WatchService

    config = app.state.config
    wcfg: WatchConfig = getattr(config, "watch", None) or WatchConfig()
    dcfg: DashboardConfig = getattr(config, "dashboard", None) or DashboardConfig()
    service = WatchService(app.state.vault, wcfg)
    app.state.watch = service
    app.state.metrics.registry.register(WatchCollector(service))
    if dcfg.enabled:
        from rempart.vault.dashboard import include_dashboard

        include_dashboard(app, dcfg)
    if not (start_loop and wcfg.enabled):
        return
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        loop = WatchLoop(service, wcfg.interval_seconds)
        loop.start()
        a.state.watch_loop = loop
        try:
            async with previous(a) as state:
                yield state
        finally:
            loop.stop()

    app.router.lifespan_context = lifespan

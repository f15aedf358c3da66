"""Fixtures for watch tests: an in-process vault (real database and storage, FakeClock) with the
watch mounted, and a real SMTP server (aiosmtpd with STARTTLS and AUTH)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from watch_helpers import SmtpServer, start_smtp

from rempart.core.clock import FakeClock
from rempart.testing.servers import free_ports
from rempart.vault import practices as vp
from rempart.vault.app import create_app
from rempart.vault.config import parse_config
from rempart.vault.service import Vault
from rempart.vault.watch import settings as st
from rempart.vault.watch.service import WatchService

MONDAY_10H_PARIS = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    (port,) = free_ports(1)
    s = start_smtp(tmp_path, port)
    try:
        yield s
    finally:
        s.stop()


@dataclass
class Env:
    app: FastAPI
    vault: Vault
    clock: FakeClock
    watch: WatchService

    def add(self, name: str, *, provider: str | None = "infogarde", contacts: tuple[str, ...] = ("dr@cabinet.test",),
            lang: str = "fr", quota: int | None = None, **overrides: Any) -> None:
        vp.add_practice(self.vault, name, actor="test", quota_bytes=quota)
        pid = self.vault.practice(name).id
        with self.vault.engine.begin() as conn:
            st.put(conn, pid, provider=provider, contacts=list(contacts), lang=lang, overrides=overrides or None)

    def provider(self, name: str, contacts: list[str], lang: str = "fr") -> None:
        with self.vault.engine.begin() as conn:
            st.put_provider(conn, name, contacts, lang)


def make_env(tmp_path: Path, smtp: SmtpServer | None = None, **watch: Any) -> Env:
    clock = FakeClock(MONDAY_10H_PARIS)
    w: dict[str, Any] = {"enabled": False, "every_seconds": 3600, "open_hours": "", "grace_seconds": 600,
                         "missing_after_seconds": 3 * 3600, "escalate_after_seconds": 2 * 3600,
                         "report_weekday": "off", "base_url": "https://vault.test:8443"}
    if smtp is not None:
        w["smtp"] = {"host": "127.0.0.1", "port": smtp.port, "username": smtp.username, "password": smtp.password,
                     "sender": "Rempart <vault@example.test>", "ca_file": str(smtp.cert), "timeout_seconds": 10}
    w.update(watch)
    cfg = parse_config({"data_dir": str(tmp_path / "vault"), "tls": {"enabled": False},
                        "metrics": {"public": True}, "watch": w,
                        "dashboard": {"login_failures": 3, "login_window_seconds": 600}}, tmp_path)
    app = create_app(cfg, clock)
    return Env(app, app.state.vault, clock, app.state.watch)


@pytest.fixture
def env(tmp_path: Path, smtp: SmtpServer) -> Env:
    return make_env(tmp_path, smtp)

"""Fixtures for watch tests: an in-process vault (real database and storage, FakeClock) with the
watch mounted, and a real SMTP server (aiosmtpd with STARTTLS and AUTH)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from watch_helpers import Env, SmtpServer, make_env, start_smtp

from rempart.testing.servers import free_ports


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    (port,) = free_ports(1)
    s = start_smtp(tmp_path, port)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def env(tmp_path: Path, smtp: SmtpServer) -> Env:
    return make_env(tmp_path, smtp)

"""Shared fixtures for the whole test suite. Keep this small and generic.

Real servers are session-scoped and started only by tests that ask for them. A missing binary
fails the test with the install command: a skip would hide a broken CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rempart.testing import servers


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.S3Server]:
    """A real SeaweedFS S3 server (``weed mini``) on loopback, with admin and client credentials."""
    try:
        cm = servers.seaweedfs(tmp_path_factory.mktemp("seaweed"))
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a throw-away PostgreSQL cluster (Debian's binaries) on loopback."""
    try:
        cm = servers.postgres(tmp_path_factory.mktemp("postgres"))
        dsn = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield dsn
    finally:
        cm.__exit__(None, None, None)

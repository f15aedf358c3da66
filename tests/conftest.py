"""Shared fixtures for the whole test suite. Keep this small and generic.

Real servers are session-scoped and started only by tests that ask for them. A missing binary
fails the test with the install command: a skip would hide a broken CI.

The suite runs in two processes (pytest-xdist, ``scripts/test.sh``); each has its own servers.
Tests marked ``slow`` (10 s and more) are collected first, so that the two processes share
them instead of one of them finishing alone with a long test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rempart.testing import servers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: the order is otherwise unchanged, and the same in every
    xdist worker, as xdist requires)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, for full disks (needs root and mount rights; skipped with the reason
    otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs root to mount a 1 MiB tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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

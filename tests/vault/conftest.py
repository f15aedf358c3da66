"""Fixtures for vault tests: a REAL vault process (``rempart vault serve``) over HTTPS on a free
loopback port, administered through its CLI and admin API."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from rempart.storage.vaultclient import VaultBackend
from rempart.storage.vaulthttp import tls_context
from rempart.testing.servers import free_ports, stop_process

PY = sys.executable


def write_config(d: Path, port: int, extra: str = "", gc: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "vault.toml"
    cfg.write_text(f"""
data_dir = "data"
[listen]
host = "127.0.0.1"
port = {port}
[tls]
enabled = true
self_signed = true
hostnames = ["127.0.0.1", "localhost"]
[gc]
grace_seconds = 0
{gc}
{extra}
""")
    return cfg


def cli(cfg: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    sub = args[0]
    argv = [PY, "-m", "rempart.cli.main", "vault", *args]
    # --config goes to the deepest sub-parser: after the action (and name, if any)
    argv.extend(["--config", str(cfg)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"rempart vault {sub} failed ({out.returncode}): {out.stderr}")
    return out


@dataclass
class VaultProc:
    root: Path
    cfg: Path
    port: int
    admin_token: str = ""
    pin: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "vault.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([PY, "-m", "rempart.cli.main", "vault", "serve", "--config", str(self.cfg)],
                                     stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vault exited: {self.log.read_text()[-3000:]}")
            try:
                if self.client().get("/v1/health").status_code == 200:
                    return
            except (httpx.TransportError, OSError, Exception):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"vault did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self, token: str | None = None) -> httpx.Client:
        ctx = tls_context("127.0.0.1", self.port, ca=None, pin=self.pin)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=ctx, headers=headers, timeout=60)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def add_practice(self, name: str | None = None, **policy: Any) -> tuple[str, dict[str, str]]:
        name = name or f"p-{secrets.token_hex(4)}"
        with self.admin() as c:
            r = c.post("/v1/admin/practices", json={"name": name})
            assert r.status_code == 201, r.text
            toks = r.json()["tokens"]
            if policy:
                r = c.put(f"/v1/admin/practices/{name}/policy", json=policy)
                assert r.status_code == 200, r.text
        return name, toks

    def backend(self, practice: str, token: str, **kw: Any) -> VaultBackend:
        kw.setdefault("pin", self.pin)
        return VaultBackend(f"{self.url}/{practice}", token=token, **kw)


def make_vault(root: Path, extra: str = "") -> VaultProc:
    (port,) = free_ports(1)
    cfg = write_config(root, port, extra)
    v = VaultProc(root, cfg, port)
    v.pin = cli(cfg, "fingerprint").stdout.strip()
    v.admin_token = cli(cfg, "admin-token").stdout.strip().splitlines()[-1]
    return v


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultProc]:
    """One shared vault process for the session (tests use fresh practices)."""
    v = make_vault(tmp_path_factory.mktemp("vault"), extra="""
[limits]
auth_failures_per_ip = 100000
auth_failures_per_practice = 100000
""")
    v.start()
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[VaultProc]:
    """A vault process of this test only (kill/restart, quotas, config variants)."""
    v = make_vault(tmp_path / "vault")
    try:
        yield v
    finally:
        v.stop()


def s3_vault(root: Path, seaweed: Any, bucket: str) -> VaultProc:
    """A vault (not started) storing in ``bucket`` of the SeaweedFS fixture, Object Lock 1 day."""
    (port,) = free_ports(1)
    cfg = write_config(root, port, extra=f"""
[storage]
kind = "s3"
endpoint = "{seaweed.endpoint}"
bucket = "{bucket}"
region = "{seaweed.region}"
access_key = "{seaweed.admin.access_key}"
secret_key = "{seaweed.admin.secret_key}"
lock_days = 1
[retention]
min_age_days = 1
""", gc="interval_seconds = 3600  # less than half of lock_days: each pass renews the locks")
    v = VaultProc(root, cfg, port)
    v.pin = cli(cfg, "fingerprint").stdout.strip()
    v.admin_token = cli(cfg, "admin-token").stdout.strip().splitlines()[-1]
    return v

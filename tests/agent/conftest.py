"""Fixtures for agent tests: a local repository with an agent key, agent configs, a real MariaDB
server (Debian's ``mariadbd`` in a private datadir on a unix socket), and the vault fixtures of
tests/vault (a real ``rempart vault serve`` process)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rempart.agent.config import AgentConfig, parse_config
from rempart.agent.setup import create_repository
from rempart.core.clock import FakeClock
from rempart.crypto.kit import TEST_KDF
from rempart.storage.local import LocalBackend

try:  # tests/vault's real-vault fixtures (module name depends on how pytest was started)
    from vault.conftest import VaultProc, make_vault, own_vault, vault
except ImportError:  # pragma: no cover
    from tests.vault.conftest import VaultProc, make_vault, own_vault, vault  # type: ignore[no-redef] # noqa: F401

PASSPHRASE = "correct horse battery staple"


@dataclass
class LocalSetup:
    repo: Path
    state: Path
    kit: Path
    repo_id: str


@pytest.fixture
def local_repo(tmp_path: Path) -> LocalSetup:
    repo, state = tmp_path / "repo", tmp_path / "state"
    created = create_repository(LocalBackend(repo, create=True), state, tmp_path / "kit.json", PASSPHRASE,
                                FakeClock(), kdf=dict(TEST_KDF), pack_size=512 * 1024)
    return LocalSetup(repo, state, created.kit_path, created.repo_id)


def agent_config(repo_url: str, paths: list[Path], *, base: Path, schedule: dict | None = None,
                 extra: dict | None = None, env: dict[str, str] | None = None) -> AgentConfig:
    raw: dict = {"repository": {"url": repo_url}, "backup": {"paths": [str(p) for p in paths], "detect": False},
                 "schedule": {"timezone": "UTC", **(schedule or {})}}
    raw.update(extra or {})
    return parse_config(raw, env or {}, base=base)


def find_mariadbd() -> str:
    for name in ("mariadbd", "mysqld"):
        for d in (None, "/usr/sbin"):
            found = shutil.which(name, path=d)
            if found:
                return found
    pytest.fail("MariaDB server not found; install it with: apt-get install -y --no-install-recommends "
                "mariadb-server mariadb-client (see .ci/install-system.sh)", pytrace=False)


@dataclass
class MariaDB:
    socket: str
    user: str
    password: str

    def sql(self, statement: str, database: str = "") -> str:
        argv = ["mariadb", "--no-defaults", "-S", self.socket, "-u", self.user, f"-p{self.password}",
                "-N", "-B", "-e", statement]
        if database:
            argv.append(database)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A throw-away MariaDB server (as the current user; root is allowed explicitly)."""
    binary = find_mariadbd()
    base = Path(tempfile.mkdtemp(prefix="rempart-mdb-"))
    data, sock, pid, log = base / "data", base / "sock", base / "pid", base / "err.log"
    user = ["--user=root"] if os.geteuid() == 0 else []
    r = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *user,
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       capture_output=True, text=True, timeout=120, check=False)
    if r.returncode:
        pytest.fail(f"mariadb-install-db failed: {r.stderr[-2000:]}", pytrace=False)
    proc = subprocess.Popen([binary, "--no-defaults", f"--datadir={data}", *user, f"--socket={sock}",
                             "--skip-networking", f"--pid-file={pid}", f"--log-error={log}",
                             "--innodb-buffer-pool-size=32M", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    password = secrets.token_hex(12)
    try:
        deadline = time.monotonic() + 60
        while True:
            ok = subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e", "select 1"],
                                capture_output=True, check=False)
            if ok.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mariadbd did not start: {log.read_text()[-2000:] if log.exists() else ''}",
                            pytrace=False)
            time.sleep(0.2)
        subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-uroot", "-e",
                        f"CREATE USER 'rempart'@'localhost' IDENTIFIED BY '{password}'; "
                        "GRANT ALL ON *.* TO 'rempart'@'localhost';"], check=True, capture_output=True)
        yield MariaDB(str(sock), "rempart", password)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)

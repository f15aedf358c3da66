"""The real-server helpers used by the whole test suite (rempart.testing.servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from rempart.testing import servers
from rempart.testing.servers import S3Server, s3_client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_weed_is_the_wheel_binary() -> None:
    weed = servers.find_weed()
    assert weed.is_file() and os.access(weed, os.X_OK)
    out = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=30).stdout
    assert "4.48" in out


def test_seaweed_fixture_is_loopback_with_separate_credentials(seaweed: S3Server) -> None:
    assert seaweed.endpoint.startswith("http://127.0.0.1:")
    assert seaweed.admin.access_key != seaweed.client.access_key
    assert seaweed.admin.secret_key not in repr(seaweed)
    admin: Any = s3_client(seaweed, seaweed.admin)
    names = [b["Name"] for b in admin.list_buckets()["Buckets"]]
    assert "rempart-ready" in names
    client: Any = s3_client(seaweed, seaweed.client)
    with pytest.raises(ClientError):
        client.create_bucket(Bucket="client-may-not")


def test_second_instance_runs_beside_the_first_and_stops(seaweed: S3Server, tmp_path: Path) -> None:
    with servers.seaweedfs(tmp_path) as other:
        assert other.endpoint != seaweed.endpoint
        admin: Any = s3_client(other, other.admin)
        admin.create_bucket(Bucket="second")
        admin.put_object(Bucket="second", Key="k", Body=b"v")
        assert _alive(other.pid)
        with pytest.raises(ClientError):  # credentials are per instance
            s3_client(other, seaweed.admin).list_buckets()  # type: ignore[attr-defined]
    assert not _alive(other.pid)
    assert s3_client(seaweed, seaweed.admin).list_buckets()  # type: ignore[attr-defined]


def test_stop_process_escalates_to_sigkill() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    servers.stop_process(p, timeout=0.5)
    assert p.returncode == -9


def test_postgres_fixture(postgres_dsn: str) -> None:
    assert "@127.0.0.1:" in postgres_dsn
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone()[0] >= 42  # type: ignore[index]
    wrong = postgres_dsn.replace(postgres_dsn.split(":")[2].split("@")[0], "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(wrong, connect_timeout=5)


def test_missing_postgres_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    with pytest.raises(servers.ServerUnavailable, match="apt-get install"):
        servers.find_pg_bin()

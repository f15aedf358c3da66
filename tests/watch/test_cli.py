"""The watch's CLI (real subprocesses on a real vault data directory): users, expectations,
providers, drills, ``watch --once`` and ``report send`` against a real SMTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from watch_helpers import SmtpServer

from rempart.vault.db import make_engine
from rempart.vault.watch import tables as t

PY = sys.executable


def run(cfg: Path, *args: str, env: dict[str, str] | None = None, json_out: bool = False) -> subprocess.CompletedProcess[str]:
    pre = ["--json"] if json_out else []
    return subprocess.run([PY, "-m", "rempart.cli.main", *pre, "vault", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def write_cfg(tmp_path: Path, smtp: SmtpServer) -> Path:
    cfg = tmp_path / "vault.toml"
    cfg.write_text(f"""
data_dir = "data"
[tls]
enabled = false
[watch]
every_seconds = 3600
open_hours = ""
report_weekday = "off"
[watch.smtp]
host = "127.0.0.1"
port = {smtp.port}
username = "{smtp.username}"
password = "{smtp.password}"
ca_file = "{smtp.cert}"
""")
    return cfg


@pytest.mark.slow
def test_cli_users_settings_watch_once_and_report(tmp_path: Path, smtp: SmtpServer) -> None:
    cfg = write_cfg(tmp_path, smtp)
    assert run(cfg, "practice", "add", "cabinet-cli").returncode == 0
    # users: the password comes from the environment, never argv
    r = run(cfg, "user", "add", "alice", "--role", "admin", env={"REMPART_USER_PASSWORD": "a long password 123"})
    assert r.returncode == 0, r.stderr
    r = run(cfg, "user", "add", "bob", "--role", "provider", env={"REMPART_USER_PASSWORD": "another long one 45"})
    assert r.returncode == 2 and "--provider" in r.stderr
    r = run(cfg, "user", "add", "carol", "--role", "admin", env={"REMPART_USER_PASSWORD": "short"})
    assert r.returncode == 2 and "12 characters" in r.stderr
    r = subprocess.run([PY, "-m", "rempart.cli.main", "vault", "user", "add", "dave", "--role", "admin",
                        "--config", str(cfg)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if k != "REMPART_USER_PASSWORD"})
    assert r.returncode == 2 and "REMPART_USER_PASSWORD" in r.stderr
    users = run(cfg, "user", "list").stdout
    assert "alice" in users and "dave" not in users
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'vault.db'}")
    with engine.connect() as conn:
        stored = conn.execute(sa.select(t.users.c.pw_hash)).scalar_one()
    assert stored.startswith("scrypt$") and "a long password" not in stored
    # a second factor: the otpauth address is printed once; --off removes it; unknown users refused
    on = run(cfg, "user", "totp", "alice", json_out=True)
    assert on.returncode == 0, on.stderr
    uri = json.loads(on.stdout)["otpauth"]
    assert uri.startswith("otpauth://totp/Rempart%20vault:alice?") and "secret=" in uri
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.users.c.totp_secret)).scalar_one() in uri
    assert run(cfg, "user", "totp", "nobody").returncode == 2
    assert run(cfg, "user", "totp", "alice", "--off").returncode == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.users.c.totp_secret)).scalar_one() is None

    # expectations and contacts, with bad input refused clearly
    bad = run(cfg, "watch", "set", "cabinet-cli", "--contact", "not-an-address")
    assert bad.returncode == 2 and "not an e-mail address" in bad.stderr
    bad = run(cfg, "watch", "set", "cabinet-cli", "--hours", "19:00-08:00")
    assert bad.returncode == 2 and "opening hours" in bad.stderr
    ok = run(cfg, "watch", "set", "cabinet-cli", "--contact", "dr@cabinet.test", "--every", "600", "--always",
             "--lang", "en", "--provider", "infogarde")
    assert ok.returncode == 0, ok.stderr
    assert "one backup every 10 min, all day" in ok.stdout
    assert run(cfg, "watch", "provider", "infogarde", "--contact", "ops@infogarde.test").returncode == 0
    assert run(cfg, "watch", "drill", "cabinet-cli", "--outcome", "ok", "--note", "fichier restauré").returncode == 0

    # never backed up since creation, 10 min expected: not late yet
    once = run(cfg, "watch", "--once", json_out=True)
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["actions"] == []
    status = run(cfg, "watch", "status", json_out=True)
    assert json.loads(status.stdout) == [{"practice": "cabinet-cli", "light": "green", "conditions": {}}]

    rep = run(cfg, "report", "send", "--practice", "cabinet-cli")
    assert rep.returncode == 0, rep.stderr
    (m,) = smtp.wait_for(lambda m: "Weekly report" in m["Subject"])
    body = m.get_content()
    assert m["X-Test-Rcpt"] == "dr@cabinet.test" and "Latest restore drill:" in body and "(passed)" in body
    assert "Backups received: 0" in body
    audit = run(cfg, "audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr

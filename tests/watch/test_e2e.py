"""End to end with real processes: a vault process (``rempart vault serve``, HTTPS), a real SMTP
server (aiosmtpd with STARTTLS on a self-signed certificate and AUTH) and the real agent CLI
(``rempart init`` / ``rempart backup`` against the vault URL, pinned certificate, backup token
from the environment). The practice stops backing up:
the SMTP server receives the late then missing alerts (and the escalation to the IT provider);
backups resume: a "resolved" arrives.

Test hook, stated honestly: to keep this fast the vault's config uses an expectation measured in
seconds (one backup every 6 s, late after +2 s, missing after +8 s, escalation after 5 s) and an
evaluation interval of 0.5 s. Nothing else differs from production: same code, real clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from watch_helpers import SmtpServer

from rempart.core.errors import TransientError
from rempart.storage.vaulthttp import tls_context
from rempart.testing.servers import free_ports, stop_process
from rempart.vault.watch import tables as t

PY = sys.executable


def rempart(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([PY, "-m", "rempart.cli.main", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"rempart {' '.join(args[:3])} failed ({out.returncode}): {out.stderr}\n{out.stdout}")
    return out


@pytest.mark.slow
def test_practice_stops_backing_up_then_resumes(tmp_path: Path, smtp: SmtpServer) -> None:
    (port,) = free_ports(1)
    cfg = tmp_path / "vault.toml"
    cfg.write_text(f"""
data_dir = "data"
[listen]
host = "127.0.0.1"
port = {port}
[tls]
enabled = true
self_signed = true
hostnames = ["127.0.0.1", "localhost"]
[watch]
interval_seconds = 0.5
every_seconds = 6
open_hours = ""
grace_seconds = 2
missing_after_seconds = 8
max_gap_seconds = 0
escalate_after_seconds = 5
report_weekday = "off"
[watch.smtp]
host = "127.0.0.1"
port = {smtp.port}
starttls = true
username = "{smtp.username}"
password = "{smtp.password}"
sender = "Rempart <vault@example.test>"
ca_file = "{smtp.cert}"
timeout_seconds = 10
""")
    c = ["--config", str(cfg)]
    out = rempart("vault", "practice", "add", "cabinet-e2e", *c).stdout
    token = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("backup:"))
    rempart("vault", "watch", "set", "cabinet-e2e", "--provider", "infogarde", "--contact", "dr@cabinet.test", *c)
    rempart("vault", "watch", "provider", "infogarde", "--contact", "astreinte@infogarde.test", "--lang", "en", *c)
    pin = rempart("vault", "fingerprint", *c).stdout.strip()
    log = open(tmp_path / "vault.log", "wb")
    proc = subprocess.Popen([PY, "-m", "rempart.cli.main", "vault", "serve", *c], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "vault.log").read_text()
            try:
                ctx = tls_context("127.0.0.1", port, ca=None, pin=pin)
                if httpx.get(f"{url}/v1/health", verify=ctx, timeout=5).status_code == 200:
                    break
            except (httpx.HTTPError, OSError, TransientError):
                pass
            assert time.monotonic() < deadline, "vault did not start"
            time.sleep(0.2)

        src = tmp_path / "cabinet"
        src.mkdir()
        (src / "patients.db").write_bytes(os.urandom(200_000))
        (src / "notes.txt").write_text("rendez-vous\n" * 1000)
        agent = {"REMPART_VAULT_TOKEN": token, "REMPART_VAULT_CA": pin, "REMPART_KIT_PASSPHRASE": "kit passphrase e2e",
                 "REMPART_STATE_DIR": str(tmp_path / "agent-state"), "REMPART_REPOSITORY": f"{url}/cabinet-e2e"}
        rempart("init", "--kit", str(tmp_path / "kit.rempart"), env=agent)

        def backup() -> None:
            (src / "notes.txt").write_text(f"rendez-vous {time.time()}\n" * 1000)
            rempart("backup", str(src), env=agent)

        t0 = time.monotonic()
        backup()
        # the practice was created seconds before its first backup, so with a 6 s schedule the
        # vault may already have reported it (a practice that never backs up is itself an
        # alert); the first backup resolves that. Wait until no alert is open and every queued
        # notification is sent, then start from a clean mailbox.
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'vault.db'}")
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                busy = conn.execute(sa.select(sa.func.count()).select_from(t.alerts)
                                    .where(t.alerts.c.is_open.is_(True))).scalar_one() + \
                    conn.execute(sa.select(sa.func.count()).select_from(t.outbox)
                                 .where(t.outbox.c.sent.is_(None))).scalar_one()
            if not busy:
                break
            assert time.monotonic() < deadline, "the first backup did not clear the initial alert"
            time.sleep(0.3)
        engine.dispose()
        initial = [m["Subject"] for m in smtp.messages]
        assert all("cabinet-e2e" in x for x in initial)
        smtp.messages.clear()
        # while it backs up (each run takes a few seconds) nothing is sent
        for _ in range(2):
            backup()
        assert smtp.messages == [], [m["Subject"] for m in smtp.messages]

        # the agent stops: late, then missing, then escalation to the IT provider (in English)
        stopped = time.monotonic()
        late = smtp.wait_for(lambda m: "en retard" in m["Subject"], timeout=30)[0]
        assert late["X-Test-Rcpt"] == "dr@cabinet.test" and late["X-Test-TLS"] == "yes" and late["X-Test-Auth"] == "yes"
        assert late["Subject"] == "[Rempart] ALERTE cabinet-e2e: sauvegarde en retard"
        smtp.wait_for(lambda m: "manquante" in m["Subject"] and m["X-Test-Rcpt"] == "dr@cabinet.test", timeout=30)
        # escalation 5 s after the late alert opened; the provider then also hears of "missing"
        # (as WORSE, or as ESCALATED at level missing if one evaluation covered both moments)
        prov = "astreinte@infogarde.test"
        smtp.wait_for(lambda m: m["X-Test-Rcpt"] == prov and m["Subject"].endswith("backup missing"), timeout=30)
        esc = [m for m in smtp.messages if m["X-Test-Rcpt"] == prov and "ESCALATED" in m["Subject"]]
        assert len(esc) == 1
        sent = [(m["X-Test-Rcpt"], m["Subject"]) for m in smtp.messages]
        assert len(sent) == len(set(sent)), sent  # nothing sent twice
        late_after = time.monotonic() - stopped
        n_before = len(smtp.messages)
        time.sleep(2)  # deduplicated: nothing new while nothing changes
        assert len(smtp.messages) == n_before, [m["Subject"] for m in smtp.messages[n_before:]]

        # the agent resumes: resolved, to the practice and to the provider that was told
        backup()
        fr = smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RÉSOLU cabinet-e2e"), timeout=30)
        en = smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RESOLVED cabinet-e2e"), timeout=30)
        assert fr[0]["X-Test-Rcpt"] == "dr@cabinet.test" and en[0]["X-Test-Rcpt"] == "astreinte@infogarde.test"
        assert all(m["X-Test-TLS"] == "yes" and m["X-Test-Auth"] == "yes" for m in smtp.messages)

        logtext = (tmp_path / "vault.log").read_text()
        assert smtp.password not in logtext and token not in logtext
        print(f"alert chain late->missing->escalated took {late_after:.1f}s after the agent stopped; "
              f"whole test {time.monotonic() - t0:.1f}s")
    finally:
        stop_process(proc)
        log.close()

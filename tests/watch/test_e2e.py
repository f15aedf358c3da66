"""End to end with real processes: a vault process (``rempart vault serve``, HTTPS), a real SMTP
server (aiosmtpd with STARTTLS on a self-signed certificate and AUTH) and the agent's real vault
client (:class:`rempart.storage.vaultclient.VaultBackend`, HTTPS with the pinned certificate and
the practice's backup token) uploading packs and snapshots in the plain format, random bytes
standing in for ciphertext (the vault has no key and cannot tell; the full agent pipeline is
tested elsewhere). The practice stops backing up:
the SMTP server receives the late then missing alerts (and the escalation to the IT provider);
backups resume: a "resolved" arrives.

Test hook, stated honestly: to keep this fast the vault's config uses an expectation measured in
seconds (one backup every 3 s, late after +1 s, missing after +4 s, escalation after 3 s) and an
evaluation interval of 0.5 s. Nothing else differs from production: same code, real clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from watch_helpers import SmtpServer, pack_and_snapshot, start_smtp

from rempart.core.errors import TransientError
from rempart.storage.base import FileType, Handle
from rempart.storage.vaultclient import VaultBackend, tls_context
from rempart.testing.servers import free_ports, stop_process

PY = sys.executable


def rempart(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([PY, "-m", "rempart.cli.main", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"rempart {' '.join(args[:3])} failed ({out.returncode}): {out.stderr}\n{out.stdout}")
    return out


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    (port,) = free_ports(1)
    s = start_smtp(tmp_path, port)
    try:
        yield s
    finally:
        s.stop()


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
every_seconds = 3
open_hours = ""
grace_seconds = 1
missing_after_seconds = 4
max_gap_seconds = 0
escalate_after_seconds = 3
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

        agent = VaultBackend(f"{url}/cabinet-e2e", token=token, pin=pin)

        def backup() -> None:
            (pn, pd), (sn, sd) = pack_and_snapshot()
            agent.save(Handle(FileType.DATA, pn), pd)
            agent.save(Handle(FileType.SNAPSHOT, sn), sd)

        t0 = time.monotonic()
        backup()
        # the practice was created seconds before its first backup, so with a 3 s schedule the
        # vault has already reported it (a practice that never backs up is itself an alert);
        # the first backup resolves that
        if smtp.messages:
            smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RÉSOLU cabinet-e2e"), timeout=30)
            time.sleep(1)
            smtp.messages.clear()
        # while it backs up every ~2 s nothing is sent
        for _ in range(2):
            time.sleep(2)
            backup()
        assert smtp.messages == [], [m["Subject"] for m in smtp.messages]

        # the agent stops: late, then missing, then escalation to the IT provider (in English)
        stopped = time.monotonic()
        late = smtp.wait_for(lambda m: "en retard" in m["Subject"], timeout=30)[0]
        assert late["X-Test-Rcpt"] == "dr@cabinet.test" and late["X-Test-TLS"] == "yes" and late["X-Test-Auth"] == "yes"
        assert late["Subject"] == "[Rempart] ALERTE cabinet-e2e: sauvegarde en retard"
        smtp.wait_for(lambda m: "manquante" in m["Subject"] and m["X-Test-Rcpt"] == "dr@cabinet.test", timeout=30)
        smtp.wait_for(lambda m: m["X-Test-Rcpt"] == "astreinte@infogarde.test", timeout=30)
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
        agent.close()
    finally:
        stop_process(proc)
        log.close()

"""A real agent process (``rempart agent run``) against a real vault process over HTTPS: the vault
killed mid-upload and restarted, the agent killed and restarted, the schedule picked up after a
restart, and the upload rate under a bandwidth cap."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from rempart.agent.enroll import write_config
from rempart.storage.base import FileType

from .conftest import VaultProc, make_vault
from .test_enroll import enroll, new_code

PY = sys.executable
pytestmark = pytest.mark.slow


@dataclass
class Agent:
    vault: VaultProc
    root: Path
    practice: str
    token: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    def start(self, **env: str) -> None:
        log = open(self.root / "agent.log", "ab")
        self.proc = subprocess.Popen([PY, "-m", "rempart.cli.main", "--state-dir", str(self.state), "agent", "run"],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log(self) -> str:
        return (self.root / "agent.log").read_text(errors="replace")

    def packs(self) -> set[str]:
        b = self.vault.backend(self.practice, self.token, attempts=1)
        try:
            return {fi.name for fi in b.list(FileType.DATA)}
        finally:
            b.close()

    def duplicate_blobs(self) -> tuple[int, int]:
        """(blobs stored in more than one pack, blobs) from the packs' plain headers. Every run has
        its own data key, so re-sending data makes *new* packs: duplicates show at blob level."""
        from collections import Counter

        from rempart.repository.repo import Repository

        b = self.vault.backend(self.practice, self.token)
        try:
            repo = Repository.open(b)
            seen: Counter[bytes] = Counter()
            for fi in b.list(FileType.DATA):
                seen.update(e.id for e in repo.read_pack_header(fi.name, fi.size).entries)
        finally:
            b.close()
        return sum(1 for n in seen.values() if n > 1), len(seen)

    def snapshots(self) -> list[dict]:
        with self.vault.client(self.token) as c:
            return list(c.get(f"/v1/p/{self.practice}/timeline").json())

    def state_doc(self) -> dict:
        p = self.state / "agent" / "state.json"
        return json.loads(p.read_text()) if p.exists() else {}


def wait_for(pred: Callable[[], object], timeout: float, what: str, agent: Agent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n--- agent log ---\n{agent.log()[-4000:]}" if agent else ""))


def upload_counts(v: VaultProc) -> tuple[int, int]:
    """(created, already there) object uploads counted by the vault since it started."""
    with v.admin() as c:
        text = c.get("/metrics").text
    created = dup = 0
    for line in text.splitlines():
        m = re.match(r'rempart_vault_requests_total\{(.*)\} ([0-9.e+]+)$', line)
        if not m or 'method="POST"' not in m.group(1) or "{type}/{name}" not in m.group(1):
            continue
        if 'status="201"' in m.group(1):
            created += int(float(m.group(2)))
        elif 'status="200"' in m.group(1):
            dup += int(float(m.group(2)))
    return created, dup


def make_data(folder: Path, n: int, size: int, seed: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        (folder / f"scan-{i:03}.dcm").write_bytes(rng.randbytes(size))


def configure(agent: Agent, *, interval: float, upload_kbps: float) -> None:
    cfg_path = agent.state / "agent.toml"
    cfg = tomllib.loads(cfg_path.read_text())
    cfg_path.unlink()
    write_config(cfg_path, repo_url=cfg["repository"]["url"], ca=None, pin=cfg["repository"]["pin"],
                 token_file=Path(cfg["repository"]["token_file"]),
                 paths=tuple(Path(p) for p in cfg["backup"]["paths"]),
                 schedule={"interval_minutes": 1, "opening_hours": "00:00-23:59",
                           "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "daily_at": "off",
                           "timezone": "UTC", "retry_attempts": 50, "retry_base_seconds": 0.5,
                           "retry_max_seconds": 2},
                 limits={"upload_kbps": upload_kbps, "nice": 5})
    # one storage try per request: a dead vault fails the attempt fast and the schedule retries it
    text = cfg_path.read_text().replace("[repository]\n", "[repository]\nattempts = 1\n", 1)
    # random test data looks encrypted to ransomware detection, which these tests do not exercise
    text = text.replace("excludes = []\n", "excludes = []\ndetect = false\n", 1)
    cfg_path.write_text(text)
    agent.env = {"REMPART_INTERVAL_MINUTES": str(interval)}  # type: ignore[attr-defined]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Agent]:
    v = make_vault(tmp_path / "vault")
    v.start()
    agent = None
    try:
        practice, _ = v.add_practice()
        root = tmp_path / "pc"
        r = enroll(v, root, new_code(v, practice))
        assert r.returncode == 0, r.stderr
        token = (root / "state" / "vault-token").read_text().strip()
        agent = Agent(v, root, practice, token)
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        v.stop()


def test_vault_killed_mid_upload_agent_finishes_without_resending(setup: Agent) -> None:
    a = setup
    make_data(a.root / "data", n=30, size=300_000)  # ~9 MB of incompressible data, 0.25 MiB packs
    configure(a, interval=60, upload_kbps=1500)
    a.start(**a.env)  # type: ignore[attr-defined]
    wait_for(lambda: len(a.packs()) >= 8, 60, "the first packs", a)
    a.vault.kill()
    time.sleep(3)  # long enough for the attempt to fail (attempts = 1)
    a.vault.start()
    stored_at_restart = a.packs()
    wait_for(lambda: a.state_doc().get("last_outcome") == "ok" and not a.state_doc().get("pending_reports"),
             120, "the run to finish and its reports to reach the vault", a)
    created, dup = upload_counts(a.vault)
    final = a.packs()
    state = a.state_doc()
    dup_blobs, blobs = a.duplicate_blobs()
    print(f"vault kill: {len(stored_at_restart)} packs stored before, {len(final)} at the end, "
          f"{created} objects created after restart, {dup} identical re-sends, {dup_blobs} of {blobs} blobs "
          f"stored twice; {state['runs']} attempts")
    assert dup_blobs == 0, "data stored before the interruption was uploaded again"
    assert len(a.snapshots()) == 1
    assert state["runs"] >= 2, "the interruption should have failed one attempt"
    # packs stored before the kill were not sent again: at most the uploads in flight at the kill
    # (2 uploader threads) reach the vault twice
    assert dup <= 2, (dup, created)
    assert len(stored_at_restart) >= 8 and created >= len(final) - len(stored_at_restart)
    assert created + len(stored_at_restart) <= len(final) + 3 + 1  # + index files and the snapshot
    # the vault knows about the failed attempt too (reported when it came back)
    with a.vault.client(a.token) as c:
        st = c.get(f"/v1/p/{a.practice}/status").json()
    assert st["last_run"]["outcome"] == "ok" and st["snapshots"] == 1


def test_agent_killed_and_restarted_resumes_and_keeps_schedule(setup: Agent) -> None:
    a = setup
    make_data(a.root / "data", n=30, size=300_000, seed=2)
    configure(a, interval=0.25, upload_kbps=1500)  # a run every 15 s
    a.start(**a.env)  # type: ignore[attr-defined]
    wait_for(lambda: len(a.packs()) >= 8, 60, "the first packs", a)
    a.kill()
    stored = a.packs()
    created0, _ = upload_counts(a.vault)
    a.start(**a.env)  # type: ignore[attr-defined]
    wait_for(lambda: a.state_doc().get("last_outcome") == "ok", 120, "the resumed run", a)
    created1, dup = upload_counts(a.vault)
    dup_blobs, blobs = a.duplicate_blobs()
    print(f"agent kill: {len(stored)} packs stored before, {created1 - created0} objects created after, "
          f"{dup} identical re-sends, {dup_blobs} of {blobs} blobs stored twice")
    assert dup_blobs == 0, "data stored before the kill was uploaded again"
    assert dup <= 2, dup  # the restarted agent did not send the stored packs again
    # objects created after the restart: the missing packs plus a few index files and the snapshot
    assert created1 - created0 <= len(a.packs()) - len(stored) + 4
    first = a.state_doc()["last_start"]
    # restart once more right after the run: the next run comes on schedule, not at start-up
    a.kill()
    time.sleep(1)
    a.start(**a.env)  # type: ignore[attr-defined]
    time.sleep(4)
    assert len(a.snapshots()) == 1, "a restart must not trigger an off-schedule run"
    wait_for(lambda: len(a.snapshots()) == 2, 60, "the next scheduled run", a)
    times = sorted(datetime.fromisoformat(s["client_time"].replace("Z", "+00:00")) if isinstance(s["client_time"], str)
                   else datetime.fromtimestamp(s["client_time"]) for s in a.snapshots())
    start0 = datetime.fromisoformat(first.replace("Z", "+00:00"))
    gap = (times[1] - start0).total_seconds()
    assert 14 <= gap <= 25, gap


def test_upload_rate_stays_near_the_cap(setup: Agent) -> None:
    a = setup
    make_data(a.root / "data", n=10, size=400_000, seed=3)  # 4 MB incompressible
    configure(a, interval=60, upload_kbps=800)
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(a.state), "--json", "agent", "run", "--once"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **a.env})  # type: ignore[attr-defined]
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["counts"]
    sent = counts["bytes_uploaded"]
    assert sent > 3_900_000
    # the token bucket allows one second of burst; the rest must take sent/cap seconds
    floor = (sent - 800_000) / 800_000
    assert elapsed >= floor, (elapsed, floor)
    rate = sent / elapsed
    print(f"upload cap 800 kB/s: achieved {rate / 1000:.0f} kB/s over {elapsed:.1f} s for {sent} bytes")
    assert rate <= 800_000 * 1.25 and rate >= 800_000 * 0.5, rate


def test_bandwidth_cap_on_the_agent_backend_stack(vault: VaultProc) -> None:
    """The agent's own backend stack (connect.wrap: LimitedBackend + RetryBackend around the vault
    client) over real HTTPS: the sustained rate after the one-second burst sits at the cap."""
    import hashlib

    from rempart.agent.connect import wrap
    from rempart.storage.base import Handle

    practice, toks = vault.add_practice()
    cap_kbps = 1000.0
    backend = wrap(vault.backend(practice, toks["backup"]), cap_kbps)
    rng = random.Random(7)
    blobs = [rng.randbytes(200_000) for _ in range(20)]  # not valid packs: the vault refuses them,
    # but only after the whole body crossed the link, which is what the cap governs
    t0 = time.monotonic()
    sent = 0
    for b in blobs:
        try:
            backend.save(Handle(FileType.INDEX, hashlib.sha256(b).hexdigest()), b)
        except Exception:
            pass
        sent += len(b)
    elapsed = time.monotonic() - t0
    sustained = (sent - cap_kbps * 1000) / elapsed  # the bucket grants one second of burst
    print(f"cap {cap_kbps:.0f} kB/s: sustained {sustained / 1000:.0f} kB/s, {sent} bytes in {elapsed:.2f} s")
    assert 0.85 * cap_kbps * 1000 <= sustained <= 1.02 * cap_kbps * 1000, sustained
    backend.close()

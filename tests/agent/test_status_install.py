"""`rempart status` levels (local state and the real vault's view) and `rempart agent install`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rempart.agent.config import StatusSettings
from rempart.agent.state import AgentState
from rempart.agent.status import compute

from .conftest import VaultProc
from .test_enroll import enroll, new_code

PY = sys.executable
NOW = datetime(2026, 1, 7, 12, tzinfo=UTC)
S = StatusSettings(orange_after_hours=26, red_after_hours=72)


def local(hours_ago: float | None, outcome: str | None = "ok") -> AgentState:
    st = AgentState(last_outcome=outcome)
    if hours_ago is not None:
        st.set_time("last_success", NOW - timedelta(hours=hours_ago))
    return st


@pytest.mark.parametrize("state, level, words", [
    (local(2), "green", "2 h ago"),
    (local(30), "orange", "30 h ago"),
    (local(100), "red", "4 days ago"),
    (local(None, None), "red", "no backup"),
    (local(3, "failed"), "orange", "last attempt failed"),
    (local(1, "suspicious"), "red", "ransomware"),
])
def test_levels_from_local_state(state: AgentState, level: str, words: str) -> None:
    st = compute(S, state, NOW, None, None, is_vault=False)
    assert st.level == level and words in st.summary, st
    assert st.action and st.source == "local"
    assert st.line().startswith(f"[{level.upper()}]")


def test_vault_view_wins_and_unreachable_vault_is_orange() -> None:
    vault = {"frozen": False, "last_clean_at": 1000.0, "server_time": 1000.0 + 50 * 3600, "last_verdict": "clean"}
    st = compute(S, local(1), NOW, vault, None, is_vault=True)
    assert st.level == "orange" and "2 days ago" in st.summary and st.source == "vault"  # the vault knows better
    st = compute(S, local(1), NOW, {**vault, "frozen": True}, None, is_vault=True)
    assert st.level == "red" and "frozen" in st.summary
    failed_drill = {"outcome": "failed", "error_class": "IntegrityError", "time": 900.0}
    st = compute(S, local(1), NOW, {**vault, "server_time": 1000.0 + 3600, "last_drill": failed_drill}, None,
                 is_vault=True)
    assert st.level == "red" and "restore drill" in st.summary
    st = compute(S, local(1), NOW, {**vault, "server_time": 1000.0 + 3600,
                                    "last_drill": {**failed_drill, "outcome": "ok"}}, None, is_vault=True)
    assert st.level == "green"
    st = compute(S, local(1), NOW, None, "transient-error", is_vault=True)
    assert st.level == "orange" and "could not be reached" in st.summary and st.vault_reachable is False


def test_status_cli_against_a_real_vault(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    assert enroll(vault, tmp_path, new_code(vault, practice)).returncode == 0
    base = [PY, "-m", "rempart.cli.main", "--state-dir", str(tmp_path / "state")]

    def status() -> tuple[int, dict]:
        r = subprocess.run([*base, "--json", "status"], capture_output=True, text=True, timeout=60)
        return r.returncode, json.loads(r.stdout)

    code, doc = status()
    assert (code, doc["level"], doc["source"]) == (2, "red", "vault")  # enrolled, nothing stored yet
    r = subprocess.run([*base, "agent", "run", "--once"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code, doc = status()
    assert (code, doc["level"]) == (0, "green") and doc["last_good_age_hours"] < 0.1
    r = subprocess.run([*base, "status"], capture_output=True, text=True, timeout=60)
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("[GREEN]")
    with vault.admin() as c:
        assert c.post(f"/v1/admin/practices/{practice}/freeze", json={"reason": "test"}).status_code == 200
    code, doc = status()
    assert (code, doc["level"]) == (2, "red") and "frozen" in doc["summary"]


def test_install_dry_run_prints_the_systemd_unit(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.toml").write_text('[repository]\nurl = "/srv/repo"\n[limits]\nnice = 12\n')
    r = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "agent", "install", "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    assert "[Service]" in unit and "[Install]" in unit and "WantedBy=multi-user.target" in unit
    exec_line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert exec_line.endswith("agent run") and str(state / "agent.toml") in exec_line and PY in exec_line
    assert "Nice=12" in unit and "Restart=always" in unit and "After=network-online.target" in unit
    assert "IOSchedulingClass=idle" in unit and "UMask=0077" in unit


def test_install_writes_unit_without_enabling(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.toml").write_text('[repository]\nurl = "/srv/repo"\n')
    units = tmp_path / "units"
    units.mkdir()
    r = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "agent", "install",
                        "--unit-dir", str(units), "--no-enable"], capture_output=True, text=True, timeout=60,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert (units / "rempart-agent.service").read_text().startswith("[Unit]")


def test_two_agents_never_run_at_once(tmp_path: Path) -> None:
    """`agent run --once` while another run holds the lock: refused (exit 1 after retries), nothing stored."""
    from rempart.agent.state import RunLock

    state = tmp_path / "state"
    repo = tmp_path / "repo"
    (tmp_path / "d").mkdir()
    state.mkdir()
    (state / "agent.toml").write_text(f'[repository]\nurl = "{repo}"\n[backup]\npaths = ["{tmp_path / "d"}"]\n'
                                      '[schedule]\nretry_attempts = 1\nretry_base_seconds = 0.1\n')
    with RunLock(state):
        r = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "--json", "agent", "run",
                            "--once"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert json.loads(r.stdout)["error_class"] == "locked"


def test_agent_lowers_its_cpu_priority(tmp_path: Path) -> None:
    """`[limits] nice` is applied by the agent process itself (the run's child processes inherit it)."""
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "d").mkdir()
    marker = tmp_path / "nice.txt"
    (state / "agent.toml").write_text(
        f'[repository]\nurl = "{tmp_path / "none"}"\n[backup]\npaths = ["{tmp_path / "d"}"]\n'
        '[schedule]\nretry_attempts = 0\n[limits]\nnice = 7\n'
        f'[[hooks]]\nname = "probe"\npre = ["sh", "-c", "cut -d\\" \\" -f19 /proc/$$/stat > {marker}"]\n')
    base = os.nice(0)
    r = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "agent", "run", "--once"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1  # no repository there: the run fails after the hook ran
    assert int(marker.read_text()) == max(base, 7)


def test_sigterm_stops_the_agent_cleanly_after_its_run(tmp_path: Path) -> None:
    """A service manager's stop (SIGTERM) ends the agent promptly; a first run was done and recorded."""
    import signal
    import time

    state, repo, data = tmp_path / "state", tmp_path / "repo", tmp_path / "d"
    data.mkdir()
    (data / "a.txt").write_text("x")
    env = {**os.environ, "REMPART_KIT_PASSPHRASE": "correct horse battery", "REMPART_KDF_TEST": "1"}
    base = [PY, "-m", "rempart.cli.main", "--state-dir", str(state)]
    assert subprocess.run([*base, "-r", str(repo), "init", "--kit", str(tmp_path / "kit")], env=env,
                          capture_output=True, timeout=60).returncode == 0
    (state / "agent.toml").write_text(f'[repository]\nurl = "{repo}"\n[backup]\npaths = ["{data}"]\ndetect = false\n')
    proc = subprocess.Popen([*base, "agent", "run"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (state / "agent" / "state.json").exists():
        time.sleep(0.2)
    assert json.loads((state / "agent" / "state.json").read_text())["last_outcome"] == "ok"
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert proc.wait(20) == 0
    assert time.monotonic() - t0 < 10
    assert "signal 15" in (proc.stderr.read() if proc.stderr else "")

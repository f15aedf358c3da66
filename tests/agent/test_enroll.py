"""Enrollment against a real vault process: good, wrong, expired and reused codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from .conftest import PASSPHRASE, VaultProc, make_vault

PY = sys.executable


def new_code(v: VaultProc, practice: str) -> str:
    with v.admin() as c:
        r = c.post(f"/v1/admin/practices/{practice}/enroll-codes")
        assert r.status_code == 201, r.text
        return str(r.json()["code"])


def enroll(v: VaultProc, root: Path, code: str | None, *extra: str, stdin: str | None = None,
           env: dict[str, str] | None = None, trust: tuple[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("hello")
    full_env = {**os.environ, "REMPART_KIT_PASSPHRASE": PASSPHRASE, "REMPART_KDF_TEST": "1", **(env or {})}
    if code is None and "REMPART_ENROLL_CODE" not in (env or {}):
        full_env.pop("REMPART_ENROLL_CODE", None)
    if code is not None:
        full_env["REMPART_ENROLL_CODE"] = code
    argv = [PY, "-m", "rempart.cli.main", "--state-dir", str(root / "state"), "--json", "enroll",
            "--vault", v.url, *(trust or ("--pin", v.pin)), "--kit", str(root / "kit.json"), "--path", str(data),
            "--pack-size-mib", "0.25", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=full_env, input=stdin)


def test_good_code_enrolls_and_backs_up(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    r = enroll(vault, tmp_path, new_code(vault, practice), "--interval-minutes", "30", "--timezone", "UTC")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["practice"] == practice and out["repository"] == f"{vault.url}/{practice}"
    state = tmp_path / "state"
    token_file = state / "vault-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("rvt_") and token not in r.stdout + r.stderr
    cfg = tomllib.loads((state / "agent.toml").read_text())
    assert cfg["repository"]["url"] == f"{vault.url}/{practice}" and cfg["repository"]["pin"] == vault.pin
    assert cfg["schedule"]["interval_minutes"] == 30 and cfg["backup"]["paths"] == [str(tmp_path / "data")]
    assert (tmp_path / "kit.json").exists()
    # the repository exists on the vault, and the agent backs up with no further step
    r2 = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "--json", "agent", "run", "--once"],
                        capture_output=True, text=True, timeout=120, env={**os.environ})
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["outcome"] == "ok"
    with vault.client(token) as c:
        st = c.get(f"/v1/p/{practice}/status").json()
    assert st["snapshots"] == 1 and st["last_run"]["outcome"] == "ok"


def test_wrong_code_is_refused_clearly_and_writes_nothing(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    good = new_code(vault, practice)
    wrong = good.split("-")[0] + "-" + "A" * len(good.split("-")[1])
    r = enroll(vault, tmp_path, wrong)
    assert r.returncode != 0
    err = json.loads(r.stderr.strip().splitlines()[-1])
    assert "wrong" in err["message"] and "new code" in err.get("hint", "")
    assert not (tmp_path / "kit.json").exists() and not (tmp_path / "state" / "vault-token").exists()
    assert not (tmp_path / "state" / "agent.toml").exists()
    # the good code still works afterwards (a wrong try does not burn it)
    assert enroll(vault, tmp_path / "again", good).returncode == 0


def test_reused_code_is_refused(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    code = new_code(vault, practice)
    assert enroll(vault, tmp_path / "pc1", None, "--code", code).returncode == 0  # the CLI contract
    r = enroll(vault, tmp_path / "pc2", code)
    assert r.returncode != 0
    assert "already used" in json.loads(r.stderr.strip().splitlines()[-1])["message"]
    assert not (tmp_path / "pc2" / "kit.json").exists()


@pytest.mark.slow
def test_expired_code_is_refused(tmp_path: Path) -> None:
    v = make_vault(tmp_path / "vault", extra="[limits]\nenroll_code_ttl_seconds = 1\n")
    v.start()
    try:
        practice, _ = v.add_practice()
        code = new_code(v, practice)
        time.sleep(1.5)
        r = enroll(v, tmp_path / "pc", code)
        assert r.returncode != 0
        assert "expired" in json.loads(r.stderr.strip().splitlines()[-1])["message"]
    finally:
        v.stop()


def test_code_from_stdin_and_missing_code(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    r = enroll(vault, tmp_path / "none", None)
    assert r.returncode == 2 and "REMPART_ENROLL_CODE" in r.stderr
    r = enroll(vault, tmp_path / "stdin", None, "--code", "-", stdin=new_code(vault, practice) + "\n")
    assert r.returncode == 0, r.stderr


def test_refused_run_does_not_spend_the_code(vault: VaultProc, tmp_path: Path) -> None:
    """Local checks happen before the single-use code is exchanged."""
    practice, _ = vault.add_practice()
    code = new_code(vault, practice)
    (tmp_path / "kit.json").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "kit.json").write_text("old kit")  # makes the run stop before the code is used
    r = enroll(vault, tmp_path, code)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    (tmp_path / "kit.json").unlink()
    assert enroll(vault, tmp_path, code).returncode == 0  # not burnt by the refused run


def test_enrollment_interrupted_after_the_token_resumes_without_a_code(vault: VaultProc, tmp_path: Path) -> None:
    """The code is spent when the token is handed out: a failure after that must not need a new code."""
    from rempart.storage.vaultclient import enroll as redeem

    practice, _ = vault.add_practice()
    token = redeem(vault.url, new_code(vault, practice), pin=vault.pin)
    state = tmp_path / "state"
    state.mkdir(parents=True)
    (state / "vault-token").write_text(token + "\n")  # what a run killed right after the exchange leaves
    r = enroll(vault, tmp_path, None)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed"] is True and json.loads(r.stdout)["practice"] == practice


def test_enroll_with_the_vault_certificate_file_instead_of_a_pin(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    cert = vault.root / "data" / "tls" / "cert.pem"
    assert cert.exists()
    r = enroll(vault, tmp_path, new_code(vault, practice), trust=("--ca", str(cert)))
    assert r.returncode == 0, r.stderr
    state = tmp_path / "state"
    cfg = tomllib.loads((state / "agent.toml").read_text())
    assert cfg["repository"]["ca_file"] == str(state / "vault-ca.pem") and "pin" not in cfg["repository"]
    r2 = subprocess.run([PY, "-m", "rempart.cli.main", "--state-dir", str(state), "--json", "agent", "run", "--once"],
                        capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr


def test_wrong_pin_is_refused_before_the_code_is_sent(vault: VaultProc, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    code = new_code(vault, practice)
    r = enroll(vault, tmp_path / "mitm", code, trust=("--pin", "sha256:" + "00" * 32))
    assert r.returncode != 0 and "does not match the pinned fingerprint" in r.stderr
    assert enroll(vault, tmp_path / "ok", code).returncode == 0  # the code was not spent

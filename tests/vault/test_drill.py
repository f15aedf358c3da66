"""Restore drills through a real vault: `rempart drill` with a restore token reads a snapshot
back in full and records the outcome in the vault; a damaged pack fails it, and the failure is
recorded, opens a red "drill" condition in the watch, and clears once a later drill passes. A
backup token can neither drill nor report one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def rempart(repo: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "-r", repo, *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _practice(vault: Any, tmp_path: Path, files: int = 25) -> tuple[str, dict[str, str], dict[str, str], str]:
    name, toks = vault.add_practice()
    src = tmp_path / "cabinet"
    src.mkdir()
    for i in range(files):
        (src / f"dossier-{i}.txt").write_text(f"patient {i}\n" * (100 + 50 * i))
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st"),
           "REMPART_KDF_TEST": "1"}
    repo = f"{vault.url}/{name}"
    assert rempart(repo, env, "init", "--kit", str(tmp_path / "kit")).returncode == 0
    return name, toks, env, repo


def _last_drill(vault: Any, name: str, token: str) -> Any:
    with vault.client(token) as c:
        r = c.get(f"/v1/p/{name}/status")
        assert r.status_code == 200, r.text
        return r.json()["last_drill"]


def _conditions(vault: Any, name: str) -> dict[str, str]:
    """The watch's current conditions for the practice (`rempart vault watch status`) and its light."""
    out = subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "vault", "watch", "status",
                          "--config", str(vault.cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(r for r in json.loads(out.stdout) if r["practice"] == name)
    return dict(row["conditions"]) | {"light": row["light"]}


def test_drill_reads_back_records_and_a_damaged_pack_fails_it(vault: Any, tmp_path: Path) -> None:
    name, toks, env, repo = _practice(vault, tmp_path)
    src = tmp_path / "cabinet"
    r = rempart(repo, env, "--json", "backup", str(src))
    assert r.returncode == 0, r.stderr
    snapshot = json.loads(r.stdout)["snapshot"]
    files = list(src.iterdir())
    drill = {**env, "REMPART_VAULT_TOKEN": toks["restore"]}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    kit = str(tmp_path / "kit")

    assert _last_drill(vault, name, toks["restore"]) is None
    r = rempart(repo, drill, "--json", "drill", "--kit", kit, "--scratch", str(scratch))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "ok" and out["recorded"] is True and out["snapshot"] == snapshot
    assert (out["files"], out["bytes"]) == (len(files), sum(f.stat().st_size for f in files))
    assert list(scratch.iterdir()) == []
    last = _last_drill(vault, name, toks["restore"])
    assert last["outcome"] == "ok" and last["snapshot"] == snapshot
    assert (last["files"], last["bytes"]) == (out["files"], out["bytes"]) and last["error_class"] is None
    assert "drill" not in _conditions(vault, name)
    assert toks["restore"] not in vault.log.read_text()

    # one byte of a stored pack flips (a disk fault at the provider): the drill says so, exit 20
    packs = sorted((vault.root / "data" / "storage" / name / "data").rglob("*"), key=lambda p: -p.stat().st_size)
    pack = next(p for p in packs if p.is_file())
    good = pack.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    pack.chmod(0o644)
    pack.write_bytes(bytes(bad))
    try:
        r = rempart(repo, drill, "drill", "--kit", kit, "--scratch", str(scratch))
        assert r.returncode == 20, r.stderr
        assert "restore drill failed; recorded in the vault" in r.stderr
        assert list(scratch.iterdir()) == []
        last = _last_drill(vault, name, toks["restore"])
        # which class depends on where the flip lands: the blob's authentication, or its id
        assert last["outcome"] == "failed" and last["files"] is None
        assert last["error_class"] in ("DecryptionError", "IntegrityError")
        cond = _conditions(vault, name)
        assert cond.get("drill") == "drill" and cond["light"] == "red"
    finally:
        pack.write_bytes(good)
    # repaired (say, from the provider's replica): the next drill passes and the condition clears
    r = rempart(repo, drill, "drill", "--kit", kit, "--scratch", str(scratch))
    assert r.returncode == 0, r.stderr
    assert "passed" in r.stdout and "recorded in the vault" in r.stdout
    assert "drill" not in _conditions(vault, name)
    recs: list[dict[str, Any]] = []
    with vault.admin() as c:  # the whole trail (the session's vault is shared), a page at a time
        while page := c.get("/v1/admin/audit", params={"after": recs[-1]["seq"] if recs else 0,
                                                       "limit": 1000}).json():
            recs += page
    mine = [json.loads(x["detail"]) for x in recs if x["practice"] == name and x["action"] == "watch.drill"]
    assert [d["outcome"] for d in mine] == ["ok", "failed", "ok"]
    assert all(d["snapshot"] == snapshot for d in mine)


def test_a_backup_token_cannot_drill_or_report_one(vault: Any, tmp_path: Path) -> None:
    name, toks, env, repo = _practice(vault, tmp_path, files=3)
    assert rempart(repo, env, "backup", str(tmp_path / "cabinet")).returncode == 0
    r = rempart(repo, env, "drill", "--kit", str(tmp_path / "kit"))
    assert r.returncode == 1 and "only pack headers" in r.stderr
    with vault.client(toks["backup"]) as c:
        assert c.post(f"/v1/p/{name}/drills", json={"outcome": "ok"}).status_code == 403
    assert _last_drill(vault, name, toks["restore"]) is None
    # malformed reports are refused and change nothing
    with vault.client(toks["restore"]) as c:
        for body in ({"outcome": "great"}, {"outcome": "ok", "files": -1}, {"outcome": "ok", "snapshot": "../x"},
                     {"outcome": "failed", "error_class": "a b/c"}):
            assert c.post(f"/v1/p/{name}/drills", json=body).status_code == 422, body
    assert _last_drill(vault, name, toks["restore"]) is None


def test_a_practice_without_any_snapshot_fails_its_drill(vault: Any, tmp_path: Path) -> None:
    name, toks, env, repo = _practice(vault, tmp_path, files=1)
    r = rempart(repo, {**env, "REMPART_VAULT_TOKEN": toks["restore"]}, "drill", "--kit", str(tmp_path / "kit"))
    assert r.returncode == 2 and "nothing to restore" in r.stderr
    last = _last_drill(vault, name, toks["restore"])
    assert last["outcome"] == "failed" and last["error_class"] == "NoSnapshot" and last["snapshot"] is None

"""Issue 4: an incident released at the vault reaches the agent by itself. Attack -> suspicious
backup -> vault frozen -> (the agent keeps its incident open while the vault is frozen, also after
a false-positive mark alone) -> admin release -> next backup clean with no --acknowledge-incident.
Real vault process, real CLI processes."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from rempart.agent.incident import released_by_vault

from .test_cli_e2e import rempart

ENV = {"REMPART_KIT_PASSPHRASE": "a long and private passphrase"}


def make_practice(root: Path, n: int = 40) -> None:
    for i in range(n):
        folder = root / f"patients/{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(folder / f"letter{i}.docx", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("word/document.xml", f"<doc>Madame {i}, " + "texte " * 200 + "</doc>")
        (folder / f"notes{i}.txt").write_text(f"Patient {i}: " + "soins dentaires, controle. " * 50)


def encrypt_in_place(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    path.write_bytes(enc.update(data) + enc.finalize())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same name, size and mtime


def test_release_at_the_vault_clears_the_agent_ledger(vault: Any, tmp_path: Path) -> None:
    name, toks = vault.add_practice()
    src = tmp_path / "cabinet"
    make_practice(src)
    env = {**ENV, "REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    assert rempart(repo, env, "init", "--kit", str(tmp_path / "kit")).returncode == 0
    r = rempart(repo, env, "backup", str(src))
    assert r.returncode == 0, r.stderr
    good = {p: p.read_bytes() for p in src.rglob("letter*.docx")}
    victims = sorted(good)[:25]
    for v in victims:
        encrypt_in_place(v)
    r = rempart(repo, env, "backup", str(src))
    assert r.returncode == 30, r.stdout + r.stderr
    with vault.admin() as c:
        st = c.get(f"/v1/admin/practices/{name}").json()
    assert st["frozen"] and st["incident"]["frozen"] and st["incident"]["last_suspicious_at"]
    suspicious = st["last_snapshot"]

    # the PC is cleaned (files restored); the vault is still frozen: the agent keeps its incident
    for v in victims:
        v.write_bytes(good[v])
    r = rempart(repo, env, "backup", str(src), "--json")
    assert r.returncode == 30, r.stdout + r.stderr
    with vault.admin() as c:
        # a false-positive mark alone leaves the practice frozen: still nothing cleared
        assert c.post(f"/v1/admin/practices/{name}/snapshots/{suspicious}/false-positive").status_code == 200
    r = rempart(repo, env, "backup", str(src), "--json")
    assert r.returncode == 30 and "incident-open" in json.loads(r.stdout)["detection"]["rules"], r.stdout

    # the admin releases the freeze at the vault: the next backup is clean, no manual step on the PC
    with vault.admin() as c:
        assert c.post(f"/v1/admin/practices/{name}/release", json={"reason": "false alarm"}).status_code == 200
    r = rempart(repo, env, "backup", str(src), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["detection"]["verdict"] == "clean"
    assert "the vault released the incident" in r.stderr
    with vault.admin() as c:
        st = c.get(f"/v1/admin/practices/{name}").json()
    assert not st["frozen"] and st["last_verdict"] == "clean"
    # the backup token reads the incident state (read-only, server times, no names)
    b = vault.backend(name, toks["backup"])
    inc = b.status()["incident"]
    b.close()
    assert set(inc) == {"frozen", "frozen_at", "released_at", "last_suspicious_at"}
    assert released_by_vault({"incident": inc})

    # a new attack after the release is caught again and freezes the practice again
    for v in victims:
        encrypt_in_place(v)
    r = rempart(repo, env, "backup", str(src))
    assert r.returncode == 30, r.stdout + r.stderr
    with vault.admin() as c:
        assert c.get(f"/v1/admin/practices/{name}").json()["frozen"]

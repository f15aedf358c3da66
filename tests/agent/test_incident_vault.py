"""The scheduled agent (AgentService) learns from a REAL vault process that an admin released
the incident, and clears its own damage ledger before its next run: attack -> suspicious ->
still suspicious while frozen -> admin release -> next run ok, nothing done on the PC."""

from __future__ import annotations

import os
import zipfile
from datetime import UTC
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from rempart.agent.config import load_config
from rempart.agent.connect import open_repository, reporter_for
from rempart.agent.service import AgentService
from rempart.core.clock import SystemClock

from .test_enroll import enroll, new_code


def letters(folder: Path, n: int = 40) -> list[Path]:
    out = []
    for i in range(n):
        p = folder / f"patients/{i % 5}/letter{i}.docx"
        p.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("word/document.xml", f"<doc>Madame {i}, " + "texte " * 200 + "</doc>")
        out.append(p)
    return out


def encrypt(path: Path) -> None:
    st = path.stat()
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    path.write_bytes(enc.update(path.read_bytes()) + enc.finalize())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_scheduled_agent_clears_its_ledger_after_a_release_at_the_vault(vault: Any, tmp_path: Path) -> None:
    practice, _ = vault.add_practice()
    root = tmp_path / "pc"
    r = enroll(vault, root, new_code(vault, practice))
    assert r.returncode == 0, r.stderr
    docs = letters(root / "data")
    config = load_config(root / "state" / "agent.toml", {})
    assert config.backup.detect
    clock = SystemClock()
    svc = AgentService(config, root / "state", clock, UTC, open_repo=lambda: open_repository(config, clock),
                       reporter=lambda: reporter_for(config, clock))
    assert svc.attempt().outcome == "ok"
    good = {p: p.read_bytes() for p in docs}
    for p in docs[:25]:
        encrypt(p)
    rec = svc.attempt()
    assert rec.outcome == "suspicious", rec
    with vault.admin() as c:
        assert c.get(f"/v1/admin/practices/{practice}").json()["frozen"]
    for p, data in good.items():  # the PC is cleaned; the vault is still frozen
        p.write_bytes(data)
    assert svc.attempt().outcome == "suspicious"  # the open incident stays until the vault releases
    with vault.admin() as c:
        assert c.post(f"/v1/admin/practices/{practice}/release", json={"reason": "restored"}).status_code == 200
    rec = svc.attempt()
    assert rec.outcome == "ok", rec
    with vault.admin() as c:
        st = c.get(f"/v1/admin/practices/{practice}").json()
    assert not st["frozen"] and st["last_verdict"] == "clean"

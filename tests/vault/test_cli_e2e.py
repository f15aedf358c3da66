"""rempart init / backup / restore against a vault URL, exactly as against a local folder
(real vault process, real CLI processes, token and pin from the environment only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rempart.core.errors import PermissionDenied
from rempart.storage.base import FileType, Handle

from .conftest import cli


def rempart(repo: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "-r", repo, *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_init_backup_restore_through_vault(vault: Any, tmp_path: Path) -> None:
    name, toks = vault.add_practice()
    src = tmp_path / "cabinet"
    (src / "patients").mkdir(parents=True)
    for i in range(40):
        (src / "patients" / f"note-{i}.txt").write_text(f"consultation {i}\n" * (50 + i * 40))
    (src / "agenda.csv").write_text("date;patient\n" * 2000)
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    r = rempart(repo, env, "init", "--kit", str(tmp_path / "kit"))
    assert r.returncode == 0, r.stderr
    r = rempart(repo, env, "backup", str(src))
    assert r.returncode == 0, r.stderr
    r = rempart(repo, env, "backup", str(src))  # nothing changed: nothing new to upload
    assert r.returncode == 0, r.stderr
    assert "0 new" in r.stdout
    # the token never appears on a command line or in the vault's output
    assert toks["backup"] not in vault.log.read_text()
    # restore with the restore token and the kit
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    out = tmp_path / "out"
    r = rempart(repo, env, "restore", "latest", "--target", str(out), "--kit", str(tmp_path / "kit"))
    assert r.returncode == 0, r.stderr
    restored = out / str(src).lstrip("/")
    for f in src.rglob("*"):
        if f.is_file():
            assert (restored / f.relative_to(src)).read_bytes() == f.read_bytes()
    # the vault recorded both snapshots with server time, clean verdicts
    with vault.admin() as c:
        st = c.get(f"/v1/admin/practices/{name}").json()
    assert st["snapshots"] == 2 and st["last_verdict"] == "clean" and not st["frozen"]
    # the backup token cannot delete what it wrote
    b = vault.backend(name, toks["backup"])
    snaps = list(b.list(FileType.SNAPSHOT))
    assert len(snaps) == 2
    with pytest.raises(PermissionDenied):
        b.remove(Handle(FileType.SNAPSHOT, snaps[0].name))
    b.close()
    out2 = cli(vault.cfg, "practice", "list")
    assert name in out2.stdout


def test_backup_token_reads_pack_headers_only(vault: Any, tmp_path: Path) -> None:
    """Ransomware holding the agent's token and even the kit cannot read old blobs through it;
    the agent can still read plain pack headers, which it needs to resume after a crash."""
    from rempart.repository.repo import Repository

    name, toks = vault.add_practice()
    src = tmp_path / "cabinet"
    src.mkdir()
    (src / "dossier.txt").write_text("soins " * 5000)
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    assert rempart(repo, env, "init", "--kit", str(tmp_path / "kit")).returncode == 0
    assert rempart(repo, env, "backup", str(src)).returncode == 0
    r = rempart(repo, env, "restore", "latest", "--target", str(tmp_path / "o"), "--kit", str(tmp_path / "kit"))
    assert r.returncode == 1 and "only pack headers" in r.stderr
    assert not (tmp_path / "o" / str(src).lstrip("/") / "dossier.txt").exists()
    b = vault.backend(name, toks["backup"])
    packs = list(b.list(FileType.DATA))
    assert packs
    headers = Repository.open(b)
    for fi in packs:
        assert headers.read_pack_header(fi.name, fi.size).entries  # allowed: plain header only
        with pytest.raises(PermissionDenied):
            b.load(Handle(FileType.DATA, fi.name), offset=0, length=16)  # blob bytes: refused
        with pytest.raises(PermissionDenied):
            b.load(Handle(FileType.DATA, fi.name))
    b.close()


def test_init_with_a_wrong_token_or_pin_says_so_and_leaves_no_kit(vault: Any, tmp_path: Path) -> None:
    """The vault is reached before the recovery kit is written: a typo in the token or the pin
    leaves nothing to clean up by hand, and the next init with the right one works."""
    name, toks = vault.add_practice()
    repo = f"{vault.url}/{name}"
    kit = tmp_path / "kit"
    base = {"REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st")}
    r = rempart(repo, base | {"REMPART_VAULT_TOKEN": "not-the-token", "REMPART_VAULT_CA": vault.pin}, "init",
                "--kit", str(kit))
    assert r.returncode == 1
    assert "rempart: error: vault: the vault token is wrong, expired or revoked" in r.stderr
    assert not kit.exists()
    other_pin = "sha256:" + "ab" * 32
    r = rempart(repo, base | {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_PIN": other_pin}, "init",
                "--kit", str(kit))
    assert r.returncode == 1 and "does not match the pinned fingerprint" in r.stderr
    assert not kit.exists()
    good = base | {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin}
    r = rempart(repo, good, "init", "--kit", str(kit))
    assert r.returncode == 0, r.stderr
    r = rempart(repo, good, "init", "--kit", str(tmp_path / "kit2"))  # once is enough
    assert r.returncode == 2 and "a repository exists at this location already" in r.stderr
    assert not (tmp_path / "kit2").exists()


def test_a_second_vault_on_a_port_in_use_says_so_and_exits_1(vault: Any, tmp_path: Path) -> None:
    """The port is bound before the vault says it listens: a service manager sees the failure."""
    from .conftest import write_config

    cfg = write_config(tmp_path / "second", vault.port)
    out = cli(cfg, "serve", check=False)
    assert out.returncode == 1
    assert f"rempart: error: cannot listen on 127.0.0.1:{vault.port}: the port is in use" in out.stderr
    assert "listening on" not in out.stdout and "Traceback" not in out.stderr
    assert vault.admin().get("/v1/admin/audit", params={"after": 0, "limit": 1}).status_code == 200  # still serving

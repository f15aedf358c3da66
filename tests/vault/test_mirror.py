"""rempart mirror: a practice copies its vault repository into a folder it holds (real vault
process, real CLI processes) and restores from that folder alone, with the recovery kit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .test_cli_e2e import rempart


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def backed_up(vault: Any, tmp_path: Path, src: Path) -> tuple[str, dict[str, str], dict[str, str], str]:
    """A new practice on ``vault``, initialised and with ``src`` backed up once (no detection:
    random test bytes look encrypted); returns (repository URL, env with the backup token,
    tokens, kit path)."""
    name, toks = vault.add_practice()
    kit = str(tmp_path / "kit")
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin,
           "REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    assert rempart(repo, env, "init", "--kit", kit).returncode == 0
    assert rempart(repo, env, "backup", "--no-detect", str(src)).returncode == 0
    return repo, env, toks, kit


def test_mirror_a_vault_repository_then_restore_from_the_folder_alone(vault: Any, tmp_path: Path) -> None:
    src = tmp_path / "cabinet"
    (src / "radios").mkdir(parents=True)
    for i in range(12):
        (src / "radios" / f"pano-{i}.dcm").write_bytes(os.urandom(40_000 + i * 9_000))
    (src / "agenda.csv").write_text("date;patient\n" * 3000)
    repo, env, toks, kit = backed_up(vault, tmp_path, src)
    name = repo.rsplit("/", 1)[1]
    dest = tmp_path / "usb" / "rempart"

    # a backup token cannot read packs back: refused, clearly, and nothing is half-written
    r = rempart(repo, env, "mirror", "--to", str(dest))
    assert r.returncode == 1 and "restore token" in r.stderr, r.stderr
    assert not dest.exists()

    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    r = rempart(repo, env, "--json", "mirror", "--to", str(dest))
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["copied"]["snapshots"] == 1 and first["copied"]["data"] >= 1 and first["damaged"] == []
    stored = vault.root / "data" / "storage" / name
    assert {k: v for k, v in files_of(dest).items() if not k.startswith(("locks", "tmp"))} == \
        {k: v for k, v in files_of(stored).items() if not k.startswith(("locks", "tmp"))}

    # a second backup, a second mirror: only what is new travels
    (src / "agenda.csv").write_text("date;patient\n" * 3000 + "2026-12-02;new\n")
    env["REMPART_VAULT_TOKEN"] = toks["backup"]
    assert rempart(repo, env, "backup", "--no-detect", str(src)).returncode == 0
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    second = json.loads(rempart(repo, env, "--json", "mirror", "--to", str(dest)).stdout)
    assert second["copied"]["snapshots"] == 1 and second["already_present"]["snapshots"] == 1
    assert second["already_present"]["data"] == first["copied"]["data"]
    assert second["bytes_copied"] < first["bytes_copied"] / 5

    # the vault is gone: the folder alone restores, with the kit
    off = {"REMPART_KIT_PASSPHRASE": env["REMPART_KIT_PASSPHRASE"], "REMPART_STATE_DIR": str(tmp_path / "st2")}
    out = tmp_path / "restored"
    r = rempart(str(dest), off, "restore", "latest", "--target", str(out), "--kit", kit)
    assert r.returncode == 0, r.stderr
    assert files_of(out / str(src).lstrip("/")) == files_of(src)
    assert rempart(str(dest), off, "check", "--read-data", "--kit", kit).returncode == 0


def test_mirror_refuses_damaged_objects_and_foreign_folders(vault: Any, tmp_path: Path) -> None:
    src = tmp_path / "cabinet"
    src.mkdir()
    (src / "compta.db").write_bytes(os.urandom(300_000))
    repo, env, toks, _ = backed_up(vault, tmp_path, src)
    name = repo.rsplit("/", 1)[1]
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    # one pack rots on the vault's disk
    pack = next(p for p in (vault.root / "data" / "storage" / name / "data").rglob("*") if p.is_file())
    pack.chmod(0o644)
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    dest = tmp_path / "usb"
    r = rempart(repo, env, "--json", "mirror", "--to", str(dest))
    assert r.returncode == 20, r.stderr
    assert json.loads(r.stdout)["damaged"] == [f"data/{pack.name}"] and "does not match its name" in r.stderr
    assert not list((dest / "data").rglob(pack.name))  # never copied
    # a folder holding something else is refused, and left as it was
    other = tmp_path / "photos"
    other.mkdir()
    (other / "vacances.jpg").write_bytes(b"jpeg")
    r = rempart(repo, env, "mirror", "--to", str(other))
    assert r.returncode == 2 and "neither empty nor a repository" in r.stderr
    assert files_of(other) == {"vacances.jpg": b"jpeg"}
    # empty folders alone (what a mirror killed before its first write leaves) are fine
    from rempart.storage.local import LocalBackend

    LocalBackend(tmp_path / "skeleton", create=True)
    r = rempart(repo, env, "mirror", "--to", str(tmp_path / "skeleton"))
    assert r.returncode == 20 and "neither empty" not in r.stderr  # 20: the rotten pack above
    assert (tmp_path / "skeleton" / "config").is_file()
    # a mirror of another repository is refused too
    shutil.copytree(dest, tmp_path / "copy")
    (tmp_path / "copy" / "config").chmod(0o644)
    (tmp_path / "copy" / "config").write_bytes(b"{}")
    r = rempart(repo, env, "mirror", "--to", str(tmp_path / "copy"))
    assert r.returncode == 2 and "holds another repository" in r.stderr


def test_a_mirror_killed_midway_leaves_no_partial_object_and_the_next_run_completes(vault: Any,
                                                                                    tmp_path: Path) -> None:
    src = tmp_path / "cabinet"
    src.mkdir()
    for i in range(6):
        (src / f"radio-{i}.dcm").write_bytes(os.urandom(6 << 20))
    repo, env, toks, kit = backed_up(vault, tmp_path, src)
    name = repo.rsplit("/", 1)[1]
    env["REMPART_VAULT_TOKEN"] = toks["restore"]
    dest = tmp_path / "usb"
    proc = subprocess.Popen([sys.executable, "-m", "rempart.cli.main", "-r", repo, "mirror", "--to", str(dest)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60

    def packs_copied() -> bool:
        return (dest / "data").is_dir() and any(p.is_file() for p in (dest / "data").rglob("*"))

    while not packs_copied() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = vault.root / "data" / "storage" / name
    copied = [p for p in (dest / "data").rglob("*") if p.is_file()]
    for p in copied:  # whatever is there under a final name is whole
        assert p.read_bytes() == next(stored.rglob(p.name)).read_bytes()
    assert not list((dest / "snapshots").iterdir()) or len(copied) == len(
        [p for p in (stored / "data").rglob("*") if p.is_file()])  # no snapshot before all its packs
    r = rempart(repo, env, "--json", "mirror", "--to", str(dest))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["already_present"]["data"] == len(copied)
    out = tmp_path / "restored"
    off = {"REMPART_KIT_PASSPHRASE": env["REMPART_KIT_PASSPHRASE"], "REMPART_STATE_DIR": str(tmp_path / "st2")}
    assert rempart(str(dest), off, "restore", "latest", "--target", str(out), "--kit", kit).returncode == 0
    assert files_of(out / str(src).lstrip("/")) == files_of(src)

"""Hostile snapshots, corrupt repositories, killed backups, secrets kept out of output."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.engine.conftest import PASSPHRASE, run_subprocess

from rempart.agent.credentials import load_credential
from rempart.core.errors import HostilePathError
from rempart.crypto.kit import decrypt_kit
from rempart.repository.format import BlobType
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.restorer import Restorer
from rempart.snapshot.tree import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, encode_tree
from rempart.storage.base import FileType
from rempart.storage.local import LocalBackend


def _forge_snapshot(env, nodes_root: list[Node], sub: dict[str, list[Node]] | None = None) -> tuple[Repository, bytes]:
    """Write a snapshot whose trees hold whatever names we like (as a hostile agent could)."""
    repo = Repository.open(LocalBackend(env.repo))
    cred = load_credential(env.state, repo.config.id)
    w = WriteSession(repo, cred.id_key)
    data_id, _ = w.add_blob(BlobType.DATA, b"pwned")
    for n in nodes_root:
        if n.type == KIND_FILE:
            n.content, n.size = [data_id], 5
        if n.type == KIND_DIR:
            kids = (sub or {}).get(n.name, [])
            for k in kids:
                if k.type == KIND_FILE:
                    k.content, k.size = [data_id], 5
            n.subtree, _ = w.add_blob(BlobType.TREE, encode_tree(kids))
    tree, _ = w.add_blob(BlobType.TREE, encode_tree(nodes_root))
    w.flush()
    w.commit({"v": 1, "time": "2030-01-01T00:00:00Z", "tree": tree.hex()}, set(), {})
    w.close()
    return repo, tree


@pytest.mark.parametrize("name", ["..", "../escaped", "a/../../escaped", "/etc/escaped", "", ".", "x\x00y"])
def test_hostile_names_never_escape_the_target(repo, tmp_path: Path, name: str) -> None:
    r, tree = _forge_snapshot(repo, [Node(name=name, type=KIND_FILE, mode=0o644)])
    kit = decrypt_kit(repo.kit.read_bytes(), PASSPHRASE)
    target = tmp_path / "restore" / "target"
    r.load_index()
    with pytest.raises(HostilePathError):
        Restorer(ReadSession(r, kit.private_key)).restore(tree, target)
    assert not (tmp_path / "restore" / "escaped").exists()
    assert not (tmp_path / "escaped").exists()
    assert not Path("/etc/escaped").exists()


def test_hostile_dir_name_refused_via_cli(repo, cli, tmp_path: Path) -> None:
    _forge_snapshot(repo, [Node(name="..", type=KIND_DIR, mode=0o755)],
                    {"..": [Node(name="evil.txt", type=KIND_FILE, mode=0o644)]})
    r = cli("restore", "latest", "--target", str(tmp_path / "t"), "--kit", str(repo.kit))
    assert r.code == 2 and "unsafe name" in r.err
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_in_snapshot_is_not_followed_by_later_entries(repo, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # a symlink named "d" to the outside, then a folder "d" with a file: must not land outside
    _forge_snapshot(repo, [Node(name="a", type=KIND_SYMLINK, mode=0o777, target=str(outside)),
                           Node(name="b", type=KIND_DIR, mode=0o755)],
                    {"b": [Node(name="x.txt", type=KIND_FILE, mode=0o644)]})
    target = tmp_path / "t"
    target.mkdir()
    os.symlink(outside, target / "b")  # planted in the target before the restore
    r = Repository.open(LocalBackend(repo.repo))
    r.load_index()
    kit = decrypt_kit(repo.kit.read_bytes(), PASSPHRASE)
    snap = sorted(r.list_snapshots(), key=lambda s: str(s[1].plain["time"]))[-1][1]
    Restorer(ReadSession(r, kit.private_key)).restore(snap.tree, target)
    assert list(outside.iterdir()) == []
    assert (target / "b").is_dir() and not (target / "b").is_symlink()
    assert (target / "b" / "x.txt").read_bytes() == b"pwned"
    assert os.readlink(target / "a") == str(outside)


def _corrupt_one_pack(repo_dir: Path) -> Path:
    pack = sorted((repo_dir / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)[-1]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(data))
    return pack


def test_check_read_data_finds_a_flipped_bit(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(200_000))
    assert cli("backup", str(src), "--no-detect").code == 0
    assert cli("check", "--read-data", "--kit", str(repo.kit)).code == 0
    _corrupt_one_pack(repo.repo)
    assert cli("check").code == 0  # the plain header is intact; only reading data can tell
    r = cli("check", "--read-data", "--kit", str(repo.kit))
    assert r.code == 20 and "does not match its name" in r.out
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 20 and "authentication failed" in r.err


def test_truncated_pack_and_tampered_snapshot_reported(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(100_000))
    assert cli("backup", str(src), "--no-detect").code == 0
    pack = next(p for p in (repo.repo / "data").rglob("*") if p.is_file())
    pack.write_bytes(pack.read_bytes()[:-10])
    snap = next((repo.repo / "snapshots").iterdir())
    snap.write_bytes(snap.read_bytes() + b"x")
    r = cli("check", "--json")
    assert r.code == 20
    errors = " ".join(r.json()["errors"])
    assert "pack" in errors and "snapshot" in errors


def test_wrong_passphrase_and_wrong_kit(repo, cli, tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert cli("backup", str(src), "--no-detect").code == 0
    monkeypatch.setenv("REMPART_KIT_PASSPHRASE", "not the passphrase")
    r = cli("restore", "latest", "--target", str(tmp_path / "o"), "--kit", str(repo.kit))
    assert r.code == 12 and "passphrase is wrong" in r.err
    assert "not the passphrase" not in r.err + r.out
    monkeypatch.setenv("REMPART_KIT_PASSPHRASE", PASSPHRASE)
    other = tmp_path / "other"
    assert cli("-r", str(other), "init", "--kit", str(tmp_path / "kit2.json")).code == 0
    r = cli("restore", "latest", "--target", str(tmp_path / "o"), "--kit", str(tmp_path / "kit2.json"))
    assert r.code == 2 and "belongs to repository" in r.err


def test_agent_state_cannot_decrypt(repo, cli, tmp_path: Path) -> None:
    """Nothing on the backing-up machine holds the recovery private key."""
    kit = decrypt_kit(repo.kit.read_bytes(), PASSPHRASE)
    secret = kit.private_key.raw
    for p in repo.state.rglob("*"):
        if p.is_file():
            assert secret not in p.read_bytes()
    for p in repo.repo.rglob("*"):
        if p.is_file():
            assert secret not in p.read_bytes()
    r = cli("restore", "latest", "--target", str(tmp_path / "o"))
    assert r.code == 2 and "recovery kit" in r.err


def _packs(repo: Path) -> int:
    return sum(1 for p in (repo / "data").rglob("*") if p.is_file())


def test_backup_killed_at_any_point_leaves_a_valid_repository(env, cli, tmp_path: Path) -> None:
    repo = env
    assert cli("init", "--kit", str(env.kit), "--pack-size", "1").code == 0
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"file{i}.bin").write_bytes(os.urandom(3_000_000))
    env = repo.environ()
    # kill points that do not depend on the machine's speed: during start-up (before any pack),
    # then once 1, 3 and 6 more packs (1 MiB each, of ~36) are stored by that run
    killed = 0
    for after_packs in (0, 1, 3, 6):
        before = _packs(repo.repo)
        p = subprocess.Popen([sys.executable, "-m", "rempart.cli.main", "backup", str(src), "--no-detect", "-q"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if after_packs == 0:
            time.sleep(0.1)
        else:
            while p.poll() is None and _packs(repo.repo) < before + after_packs:
                time.sleep(0.002)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        r = run_subprocess(repo, "check")
        assert r.code == 0, r.out + r.err
    assert killed == 4
    assert _packs(repo.repo) >= 10  # the killed runs did store packs
    r_before = Repository.open(LocalBackend(repo.repo))
    ids: list[bytes] = []
    stored_before = 0
    for fi in r_before.backend.list(FileType.DATA):
        ids.extend(e.id for e in r_before.read_pack_header(fi.name, fi.size).entries)
        stored_before += fi.size
    assert len(ids) == len(set(ids)), "a killed run uploaded a blob that an earlier run had stored"
    r = run_subprocess(repo, "backup", str(src), "--no-detect", "--json")
    assert r.code == 0, r.err
    uploaded = r.json()["storage"]["bytes_stored"]
    # what the killed runs stored is reused, not sent again
    assert uploaded <= max(0, 36_000_000 - stored_before) + 1_500_000, (uploaded, stored_before)
    r = run_subprocess(repo, "check", "--read-data", "--kit", str(repo.kit))
    assert r.code == 0, r.out
    r = run_subprocess(repo, "restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(repo.kit))
    assert r.code == 0, r.err
    out = tmp_path / "out" / src.relative_to("/")
    for i in range(12):
        a = hashlib.sha256((src / f"file{i}.bin").read_bytes()).digest()
        assert hashlib.sha256((out / f"file{i}.bin").read_bytes()).digest() == a

"""Restore in batches on a thread pool: identical trees, sparse files, damaged blobs."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.engine.conftest import tree_state

from rempart.repository.format import BlobType
from rempart.repository.repo import Repository
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend


def _init(cli, env, pack_mib: int = 1) -> None:  # type: ignore[no-untyped-def]
    r = cli("init", "--kit", str(env.kit), "--pack-size", str(pack_mib))
    assert r.code == 0, r.err


def _restore(cli, env, target: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("restore", *(extra or ("latest",)), "--target", str(target), "--kit", str(env.kit))


def test_batched_restore_is_identical_with_shared_chunks_and_spread_files(env, cli, tmp_path: Path) -> None:
    rng = random.Random(7)
    src = tmp_path / "src"
    (src / "patients").mkdir(parents=True)
    shared = rng.randbytes(300_000)
    for i in range(400):  # many small files: several files per batch, one read per run
        (src / "patients" / f"note-{i:03d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 6000)))
    (src / "a.dcm").write_bytes(shared)
    (src / "b.dcm").write_bytes(shared)  # same chunks as a.dcm (deduplicated)
    (src / "c.dcm").write_bytes(shared + b"tail")
    db = src / "practice.db"
    db.write_bytes(rng.randbytes(3 * 1024 * 1024))
    os.chmod(src / "a.dcm", 0o640)
    _init(cli, env)
    assert cli("backup", str(src), "--no-detect").code == 0
    # change the middle of the database: the second snapshot's file spans packs of both backups
    with open(db, "r+b") as f:
        f.seek(1024 * 1024)
        f.write(rng.randbytes(500_000))
    os.utime(db, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    assert cli("backup", str(src), "--no-detect").code == 0
    r = _restore(cli, env, tmp_path / "out")
    assert r.code == 0, r.err
    assert tree_state(tmp_path / "out" / src.relative_to("/")) == tree_state(src)


def test_zero_runs_become_holes_and_length_is_kept(env, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    mib = 1024 * 1024
    data = os.urandom(mib)
    layouts = {
        "lead-hole.img": bytes(8 * mib) + data,
        "mid-hole.img": data + bytes(8 * mib) + data,
        "tail-hole.img": data + bytes(8 * mib),
        "all-zero.img": bytes(6 * mib),
    }
    for name, content in layouts.items():
        (src / name).write_bytes(content)
    _init(cli, env, pack_mib=4)
    assert cli("backup", str(src), "--no-detect").code == 0
    r = _restore(cli, env, tmp_path / "out")
    assert r.code == 0, r.err
    out = tmp_path / "out" / src.relative_to("/")
    for name, content in layouts.items():
        p = out / name
        assert p.read_bytes() == content, name
        # at most the non-zero data plus a few chunks' rounding is allocated
        assert p.stat().st_blocks * 512 <= content.count(data) * mib + 2 * mib, name


def _corrupt_largest_data_blob(repo_dir: Path) -> None:
    repo = Repository.open(LocalBackend(repo_dir))
    repo.load_index()
    _, loc = max(((b, loc) for b, loc in repo.index.items() if loc.type == BlobType.DATA),
                 key=lambda item: item[1].length)
    path = LocalBackend(repo_dir)._path(Handle(FileType.DATA, loc.pack.hex()))
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([byte[0] ^ 0x55]))


def test_damaged_blob_fails_naming_the_file_and_leaves_no_partial_file(env, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "letter.txt").write_text("Bonjour\n")
    (src / "xray.dcm").write_bytes(os.urandom(2 * 1024 * 1024))  # stored chunks of up to 256 KiB
    _init(cli, env)
    assert cli("backup", str(src), "--no-detect").code == 0
    _corrupt_largest_data_blob(env.repo)
    r = _restore(cli, env, tmp_path / "out")
    assert r.code == 20, (r.code, r.err)
    assert "xray.dcm" in r.err
    assert not (tmp_path / "out" / src.relative_to("/") / "xray.dcm").exists()

"""`rempart drill` on a local repository: a full restore into a scratch folder, counted on disk
against the snapshot's trees, then removed; damaged data fails it with exit code 20."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.engine.conftest import Env, run_subprocess

from rempart.snapshot import restorer


def _source(tmp: Path) -> tuple[Path, int, int]:
    """A small practice folder with the kinds of entries a restore writes; its regular files'
    count and bytes."""
    src = tmp / "cabinet"
    (src / "patients" / "empty-folder").mkdir(parents=True)
    for i in range(30):
        (src / "patients" / f"note-{i}.txt").write_text(f"consultation {i}\n" * (20 + 37 * i))
    (src / "radio.bin").write_bytes(os.urandom(300_000))
    (src / "vide.txt").write_bytes(b"")
    os.symlink("radio.bin", src / "lien-radio")
    os.mkfifo(src / "tube")
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    return src, len(files), sum(p.stat().st_size for p in files)


def _backup(repo: Env, src: Path) -> str:
    r = run_subprocess(repo, "--json", "backup", str(src))
    assert r.code == 0, r.err
    return str(r.json()["snapshot"])


def test_drill_restores_everything_counts_it_and_removes_it(repo: Env) -> None:
    src, files, size = _source(repo.tmp)
    name = _backup(repo, src)
    scratch = repo.tmp / "scratch"
    scratch.mkdir()
    r = run_subprocess(repo, "--json", "drill", "--kit", str(repo.kit), "--scratch", str(scratch))
    assert r.code == 0, r.err
    out = r.json()
    assert out["outcome"] == "ok" and out["snapshot"] == name
    assert (out["files"], out["bytes"]) == (files, size)
    assert out["recorded"] is False  # a local repository: no vault to tell
    assert list(scratch.iterdir()) == []  # the restored copy is gone

    r = run_subprocess(repo, "drill", name[:8], "--kit", str(repo.kit), "--scratch", str(scratch), "--keep")
    assert r.code == 0, r.err
    assert f"restore drill of snapshot {name[:8]}: passed, {files} files" in r.out
    (kept,) = scratch.iterdir()
    assert f"restored copy kept in {kept}" in r.out
    restored = kept / src.relative_to("/")
    assert (restored / "radio.bin").read_bytes() == (src / "radio.bin").read_bytes()
    assert os.readlink(restored / "lien-radio") == "radio.bin"


def test_a_damaged_snapshot_file_fails_a_drill_of_latest(repo: Env) -> None:
    src, _, _ = _source(repo.tmp)
    first = _backup(repo, src)
    (src / "agenda.txt").write_text("rdv\n" * 500)
    second = _backup(repo, src)
    path = repo.repo / "snapshots" / first
    path.write_bytes(path.read_bytes()[:40])  # the older restore point is lost
    r = run_subprocess(repo, "drill", "--kit", str(repo.kit))
    assert r.code == 20, r.err
    assert f"1 snapshot file(s) cannot be read: {first[:8]}" in r.err
    # naming the intact one drills that one only
    r = run_subprocess(repo, "drill", second, "--kit", str(repo.kit))
    assert r.code == 0, r.err


def test_a_damaged_pack_fails_the_drill_and_leaves_no_scratch(repo: Env) -> None:
    src, _, _ = _source(repo.tmp)
    _backup(repo, src)
    pack = max((p for p in (repo.repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x40
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    scratch = repo.tmp / "scratch"
    scratch.mkdir()
    r = run_subprocess(repo, "drill", "--kit", str(repo.kit), "--scratch", str(scratch))
    assert r.code == 20, r.err
    assert "cannot restore" in r.err
    assert list(scratch.iterdir()) == []


def test_a_restored_copy_missing_a_file_fails_the_drill(repo: Env, cli: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The drill counts what is on disk, not what the restorer says it wrote."""
    src, _, _ = _source(repo.tmp)
    _backup(repo, src)
    real = restorer.Restorer.restore

    def losing(self: Any, tree: bytes, target: Path, *a: Any, **kw: Any) -> Any:
        stats = real(self, tree, target, *a, **kw)
        next(p for p in target.rglob("note-3.txt")).unlink()
        return stats

    monkeypatch.setattr(restorer.Restorer, "restore", losing)
    r = cli("drill", "--kit", str(repo.kit))
    assert r.code == 20, r.err
    assert "the restored copy holds" in r.err


def test_nothing_to_restore_and_a_missing_scratch_folder(repo: Env) -> None:
    r = run_subprocess(repo, "drill", "--kit", str(repo.kit))
    assert r.code == 2 and "the repository has no snapshot: there is nothing to restore" in r.err
    r = run_subprocess(repo, "drill", "--kit", str(repo.kit), "--scratch", str(repo.tmp / "nowhere"))
    assert r.code == 2 and "does not exist" in r.err

"""This machine's own files going wrong: a damaged state cache, a full disk under the state
folder, the restore target or the recovery kit, a restore target that is a file. Each gives
one sentence and an exit code (never a traceback), loses nothing, and the next run works."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from tests.engine.conftest import Env, run_subprocess


def _state_folder(env: Env) -> Path:
    (folder,) = (env.state / "repos").iterdir()
    return folder


def _snapshots(env: Env) -> list[dict]:  # type: ignore[type-arg]
    r = run_subprocess(env, "snapshots", "--json")
    assert r.code == 0, r.err
    return r.json()  # type: ignore[no-any-return]


def _files(root: Path, n: int) -> Path:
    src = root / "src"
    for d in range(n):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (src / f"d{d}" / f"f{i}.txt").write_text(f"folder {d} file {i}\n" * 30)
    (src / "big.bin").write_bytes(os.urandom(2 << 20))
    return src


def _fill(fs: Path) -> None:
    """Take every free block of ``fs``."""
    try:
        with open(fs / "fill", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def _one_sentence(err: str) -> None:
    assert "Traceback" not in err
    assert err.startswith("rempart: error: ")


def test_a_damaged_cache_is_set_aside_and_the_backup_completes(repo: Env) -> None:
    src = _files(repo.tmp, 5)
    assert run_subprocess(repo, "backup", str(src)).code == 0
    cache = _state_folder(repo) / "cache.sqlite"
    with open(cache, "r+b") as f:  # the header and first pages: "file is not a database"
        f.write(os.urandom(8192))
    r = run_subprocess(repo, "--json", "backup", str(src))
    assert r.code == 0, r.err
    assert "the local state cache was damaged and has been moved to" in r.err
    out = r.json()
    assert out["notices"] and "cache.sqlite.damaged" in out["notices"][0]
    assert out["stats"]["files_new"] == 201  # every file read again...
    assert out["storage"]["bytes_stored"] < 64 * 1024  # ...but no content uploaded again (2 MiB)
    assert (cache.parent / "cache.sqlite.damaged").read_bytes()[:100] != b""  # kept for a look
    r = run_subprocess(repo, "--json", "backup", str(src))  # and the new cache works
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_unchanged"] == 201 and r.json()["notices"] == []
    assert len(_snapshots(repo)) == 3


def test_a_cache_found_damaged_during_the_run_fails_clearly_then_the_next_run_completes(repo: Env) -> None:
    src = _files(repo.tmp, 30)
    assert run_subprocess(repo, "backup", str(src)).code == 0
    cache = _state_folder(repo) / "cache.sqlite"
    db = sqlite3.connect(cache)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
    leaves = [r[0] for r in db.execute("SELECT pageno FROM dbstat WHERE name = 'files'") if r[0] != root]
    db.close()
    assert len(leaves) > 10
    with open(cache, "r+b") as f:  # the files table's pages below its root: opening still works
        for n in leaves:
            f.seek((n - 1) * page)
            f.write(os.urandom(page))
    r = run_subprocess(repo, "backup", str(src))
    assert r.code == 1
    _one_sentence(r.err)
    assert "the local state cache was found damaged during the backup; no snapshot was stored" in r.err
    assert (cache.parent / "cache.sqlite.damaged").exists() and not cache.exists()
    assert len(_snapshots(repo)) == 1
    r = run_subprocess(repo, "--json", "backup", str(src))
    assert r.code == 0, r.err
    assert r.json()["storage"]["bytes_stored"] < 64 * 1024
    assert len(_snapshots(repo)) == 2


def test_a_full_state_folder_is_one_clear_error(repo: Env, tiny_fs: Path) -> None:
    src = _files(repo.tmp, 2)
    repo.state = tiny_fs / "state"
    assert run_subprocess(repo, "key", "add-agent", "--kit", str(repo.kit)).code == 0
    _fill(tiny_fs)
    r = run_subprocess(repo, "backup", str(src))
    assert r.code == 1
    _one_sentence(r.err)
    assert "no space left on the device" in r.err
    assert "hint: free some space there" in r.err
    assert _snapshots(repo) == []


def test_restore_into_a_full_disk_is_one_clear_error_and_leaves_no_partial_file(repo: Env, tiny_fs: Path) -> None:
    src = _files(repo.tmp, 1)
    assert run_subprocess(repo, "backup", str(src)).code == 0
    target = tiny_fs / "out"
    r = run_subprocess(repo, "restore", "latest", "--target", str(target), "--kit", str(repo.kit))
    assert r.code == 1
    _one_sentence(r.err)
    assert "big.bin: cannot restore: no space left on the device" in r.err
    assert [p.name for p in target.rglob("big.bin")] == []  # the incomplete file was removed
    restored = list(target.rglob("f*.txt"))  # what was written before the failure is whole
    assert all(p.read_bytes() == (src / p.relative_to(target / src.relative_to("/"))).read_bytes()
               for p in restored)


def test_restore_target_that_is_a_file(repo: Env) -> None:
    src = _files(repo.tmp, 1)
    assert run_subprocess(repo, "backup", str(src)).code == 0
    target = repo.tmp / "a-file"
    target.write_bytes(b"keep me")
    r = run_subprocess(repo, "restore", "latest", "--target", str(target), "--kit", str(repo.kit))
    assert r.code == 2
    _one_sentence(r.err)
    assert f"the restore target {target} exists and is not a folder" in r.err
    assert target.read_bytes() == b"keep me"


def test_init_with_the_kit_on_a_full_disk_leaves_no_partial_kit(env: Env, tiny_fs: Path) -> None:
    _fill(tiny_fs)
    kit = tiny_fs / "kit.json"
    r = run_subprocess(env, "init", "--kit", str(kit))
    assert r.code == 1
    _one_sentence(r.err)
    assert f"recovery kit {kit}: no space left on the device" in r.err
    assert not kit.exists()  # nothing half-written that a later init would refuse to replace
    r = run_subprocess(env, "init", "--kit", str(env.kit))  # the same repository, another place
    assert r.code == 0, r.err
    assert env.kit.exists()


def test_a_source_holding_the_repository_and_the_state_folder_leaves_them_out(repo: Env) -> None:
    """Backing up a whole disk that holds the repository (D:\\ with D:\\Backup): each run would
    store the packs of the runs before again, and detection would take them for encrypted
    files. The repository and the state folder are left out, by identity (device, inode)."""
    _files(repo.tmp, 2)
    outs = []
    for _ in range(2):
        r = run_subprocess(repo, "--json", "backup", str(repo.tmp))
        assert r.code == 0, r.err  # no alert either
        outs.append(r.json())
        assert f"note: {repo.repo} is left out" in r.err and f"note: {repo.state} is left out" in r.err
    assert outs[1]["storage"]["bytes_stored"] < 16 * 1024  # nothing new: the packs just written are not read
    r = run_subprocess(repo, "ls", "latest", "--kit", str(repo.kit))
    assert r.code == 0, r.err
    listed = set(r.out.split())
    assert str(repo.tmp / "src" / "big.bin") in listed
    assert not {p for p in listed if p.startswith((str(repo.repo), str(repo.state)))}

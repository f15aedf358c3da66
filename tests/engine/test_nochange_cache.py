"""The state cache across runs: a run with nothing changed leaves the stored rows alone, and
after any mix of changes the cache holds exactly what a run from scratch would record."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import rempart.snapshot.cache as cache_mod
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.config import CONFIG, new_config
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.archiver import Archiver
from rempart.snapshot.cache import StateCache
from rempart.snapshot.options import BackupOptions
from rempart.storage.memory import MemoryBackend


class TypeObserver:
    """Detection stand-in: the features of a file are its extension as the type."""

    def sample_plan(self, size: int) -> list[tuple[int, int]]:
        return []

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]:
        return {"t": name.rsplit(".", 1)[-1]}

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None:
        pass


class Runs:
    def __init__(self) -> None:
        self.idk = IdKey.generate()
        self.backend = MemoryBackend()
        self.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", RecoveryPrivateKey.generate(),
                                             self.idk).to_bytes())
        self.n = 0

    def run(self, paths: list[Path], state: Path, *, commit: bool = True, **opts: Any) -> dict[str, Any]:
        """One backup; returns its stats plus what the cache reported before committing."""
        self.n += 1
        repo = Repository.open(self.backend)
        repo.load_index()
        cache = StateCache(state)
        session = WriteSession(repo, self.idk)
        try:
            archiver = Archiver(session, cache, BackupOptions(**opts), now=time.time(), observer=TypeObserver())
            archiver.archive(paths)
            session.flush()
            out = archiver.stats.to_dict()
            out["deleted"] = cache.deleted_count()
            out["deleted_paths"] = sorted(p for p, _ in cache.iter_deleted())
            if commit:
                cache.commit(f"run{self.n}")
        finally:
            session.close()
            cache.close()
        return out


def rows(state: Path) -> dict[tuple[bytes, bytes], tuple[Any, ...]]:
    """The stored file rows, without the read time (a fresh run reads at another time)."""
    db = sqlite3.connect(state / "cache.sqlite")
    try:
        return {(r[0], r[1]): r[2:8] for r in db.execute("SELECT * FROM files")}
    finally:
        db.close()


def stored_type_counts(state: Path) -> dict[str, int]:
    cache = StateCache(state)
    try:
        db = cache.db
        full = {t: n for t, n in db.execute(
            "SELECT json_extract(features, '$.t'), COUNT(*) FROM files GROUP BY 1") if t is not None}
        assert cache.feature_type_counts() == full  # the kept-up-to-date counts equal a full count
        dirs = {d for (d,) in db.execute("SELECT dir FROM dirs")}
        assert dirs == {d for (d,) in db.execute("SELECT DISTINCT dir FROM files")}
        return full
    finally:
        cache.close()


def pages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "data" / "src"
    for f in range(12):
        d = s / "patients" / f"p{f:02d}"
        d.mkdir(parents=True)
        for i in range(25):
            (d / f"img{i}.dcm" if i % 2 else d / f"note{i}.txt").write_bytes(os.urandom(200 + 7 * i))
    (s / "empty").mkdir()
    (s / "top.txt").write_text("top")
    return s


def test_a_run_with_nothing_changed_leaves_the_stored_rows_alone(runs: Runs, src: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = runs.run([src], state)
    assert first["files_read"] == 301
    before_rows, before = rows(state), pages(state / "cache.sqlite")
    second = runs.run([src], state)
    assert (second["files_unchanged"], second["files_read"], second["deleted"]) == (301, 0, 0)
    assert rows(state) == before_rows
    after = pages(state / "cache.sqlite")
    changed = sum(a != b for a, b in zip(before, after, strict=False)) + abs(len(after) - len(before))
    # the file header, meta and the trees of the folders whose mtime moved; not the file rows
    # (301 rows of ~330 bytes span about 25 pages, all of which a full rewrite would touch)
    assert changed <= 6, (changed, len(after))
    assert stored_type_counts(state) == {"txt": 157, "dcm": 144}


def test_after_changes_the_cache_equals_one_built_from_scratch(runs: Runs, src: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "HOLD_ROWS", 10)  # folders of 25 files are written like changed ones
    state = tmp_path / "state"
    runs.run([src], state)
    p = src / "patients"
    (p / "p00" / "img1.dcm").write_bytes(b"changed")  # changed
    (p / "p01" / "note0.txt").unlink()  # deleted
    (p / "p02" / "new.pdf").write_bytes(b"%PDF new")  # added
    shutil.rmtree(p / "p03")  # a whole folder gone
    (p / "p04").rename(p / "p04-moved")  # moved
    (p / "p05" / "note2.txt").unlink()
    (p / "p05" / "note2.txt").mkdir()  # a file became a folder
    (p / "p05" / "note2.txt" / "inner.txt").write_text("inner")
    out = runs.run([src], state)
    gone = [p / "p01" / "note0.txt", p / "p05" / "note2.txt"]
    gone += [p / "p03" / n for n in os.listdir(p / "p04-moved")] + [p / "p04" / n for n in os.listdir(p / "p04-moved")]
    assert out["deleted_paths"] == sorted(str(g) for g in gone)
    assert out["deleted"] == len(gone) == 52
    fresh = tmp_path / "fresh"
    runs.run([src], fresh)
    assert rows(state) == rows(fresh)
    assert stored_type_counts(state) == stored_type_counts(fresh)
    again = runs.run([src], state)  # and the next run finds everything unchanged
    assert (again["files_read"], again["deleted"]) == (0, 0)
    assert rows(state) == rows(fresh)


def test_backup_paths_that_are_files(runs: Runs, src: Path, tmp_path: Path) -> None:
    """Folders made of the backup paths are never listed: their previous rows are counted."""
    state = tmp_path / "state"
    d = src / "patients" / "p00"
    runs.run([d / "img1.dcm", d / "note0.txt"], state)
    assert runs.run([d / "img1.dcm", d / "note0.txt"], state)["deleted"] == 0
    out = runs.run([d / "img1.dcm"], state)
    assert out["deleted_paths"] == [str(d / "note0.txt")]
    assert set(rows(state)) == {(os.fsencode(d), b"img1.dcm")}
    runs.run([src / "top.txt"], state)  # another folder: the old one's rows go
    assert set(rows(state)) == {(os.fsencode(src), b"top.txt")}
    stored_type_counts(state)


def test_an_unfinished_run_leaves_the_previous_state(runs: Runs, src: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    runs.run([src], state)
    before = rows(state)
    (src / "patients" / "p00" / "img1.dcm").write_bytes(b"changed")
    shutil.rmtree(src / "patients" / "p01")
    runs.run([src], state, commit=False)  # e.g. killed before its snapshot was stored
    assert rows(state) == before
    out = runs.run([src], state)
    assert (out["files_read"], out["deleted"]) == (1, 25)  # judged against the last committed run
    stored_type_counts(state)


def test_a_cache_of_the_previous_layout_is_migrated(runs: Runs, src: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    runs.run([src], state)
    db = sqlite3.connect(state / "cache.sqlite", isolation_level=None)
    db.execute("DROP TABLE dirs")  # what the previous code left behind
    db.execute(f"CREATE TABLE files_new {cache_mod.FILES_COLUMNS}")
    db.execute(f"CREATE TABLE trees_new {cache_mod.TREES_COLUMNS}")
    db.execute("DELETE FROM meta WHERE key IN (?, ?)", (cache_mod.TYPE_COUNTS_KEY, cache_mod.LAYOUT_KEY))
    db.execute("CREATE TABLE junk (x BLOB)")  # and, like it, many free pages
    db.executemany("INSERT INTO junk VALUES (?)", ((bytes(4000),) for _ in range(1000)))
    db.execute("DROP TABLE junk")
    assert db.execute("PRAGMA freelist_count").fetchone()[0] > 1000
    db.close()
    (src / "patients" / "p02" / "note0.txt").unlink()
    out = runs.run([src], state)
    assert (out["files_unchanged"], out["deleted"]) == (300, 1)
    fresh = tmp_path / "fresh"
    runs.run([src], fresh)
    assert rows(state) == rows(fresh)
    assert stored_type_counts(state) == {"txt": 156, "dcm": 144}
    db = sqlite3.connect(state / "cache.sqlite")
    assert db.execute("PRAGMA freelist_count").fetchone()[0] < 50  # compacted after the commit
    db.close()
    assert (state / "cache.sqlite").stat().st_size < 200_000


def test_a_commit_by_another_version_is_noticed(runs: Runs, src: Path, tmp_path: Path) -> None:
    """Another version of rempart committed last (it knows nothing of ``dirs`` or the stored
    counts): both are rebuilt, so a file only that version recorded is still seen to go."""
    state = tmp_path / "state"
    runs.run([src], state)
    db = sqlite3.connect(state / "cache.sqlite", isolation_level=None)
    db.execute("INSERT INTO files SELECT ?, name, size, mtime_ns, ctime_ns, inode, content, features, read_at "
               "FROM files LIMIT 1", (os.fsencode(str(src / "elsewhere")),))
    db.execute("UPDATE meta SET value='other' WHERE key='last_snapshot'")
    db.close()
    out = runs.run([src], state)
    assert out["deleted"] == 1
    assert out["deleted_paths"][0].startswith(str(src / "elsewhere"))
    stored_type_counts(state)

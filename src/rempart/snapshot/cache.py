"""The agent's local state cache (SQLite): what the last snapshot held, per path.

Used to skip re-reading unchanged files. "Unchanged" needs size, mtime, ctime and inode to
match (ransomware can restore mtimes and keep sizes, but not the ctime), the content blobs to
still be in the index, and the last full read to be recent enough (periodic full re-read).
A lost cache only costs reading time: dedup still avoids re-uploading known chunks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rempart.core.errors import LockedError

FILES_COLUMNS = """(
  dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
  content BLOB, features TEXT, read_at REAL, PRIMARY KEY (dir, name)) WITHOUT ROWID"""
FLUSH_ROWS = 2048
#: per folder: a signature of its entries (snapshot.tree.tree_signature) and the tree id it gave
TREES_COLUMNS = "(dir BLOB PRIMARY KEY, sig BLOB, tree BLOB) WITHOUT ROWID"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files {FILES_COLUMNS};
CREATE TABLE IF NOT EXISTS trees {TREES_COLUMNS};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class CachedFile:
    """One file of the previous run, as its state-cache row (kept to be written back as is)."""

    __slots__ = ("content", "ctime_ns", "features_raw", "inode", "mtime_ns", "path", "read_at", "row", "size")

    def __init__(self, path: str, row: tuple[Any, ...]) -> None:
        self.path = path
        self.row = row  # (dir, name, size, mtime_ns, ctime_ns, inode, content, features, read_at)
        self.size: int = row[2]
        self.mtime_ns: int = row[3]
        self.ctime_ns: int = row[4]
        self.inode: int = row[5]
        raw = row[6] or b""
        self.content: list[bytes] = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        self.features_raw: str | None = row[7] or None  # canonical JSON, parsed only when needed
        self.read_at: float = row[8] or 0.0

    @property
    def features(self) -> dict[str, Any] | None:
        return json.loads(self.features_raw) if self.features_raw else None


class StateCache:
    """Single-writer: one backup at a time per repository (a lock file enforces it).

    Rows are read one folder at a time (one query per folder, not per file) and written in
    batches inside a transaction.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lockfile = open(folder / "lock", "a+")
        _lock_exclusive(self._lockfile)
        self.db = sqlite3.connect(folder / "cache.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if self.db.execute("SELECT COUNT(*) FROM pragma_table_info('files') WHERE name='dir'").fetchone()[0] == 0:
            self.db.execute("DROP TABLE files")  # an older layout: start afresh (costs one full read)
            self.db.executescript(SCHEMA)
        self.db.execute("DROP TABLE IF EXISTS files_new")
        self.db.execute(f"CREATE TABLE files_new {FILES_COLUMNS}")
        self.db.execute("DROP TABLE IF EXISTS trees_new")
        self.db.execute(f"CREATE TABLE trees_new {TREES_COLUMNS}")
        self._batch: list[tuple[Any, ...]] = []
        self._tree_batch: list[tuple[bytes, bytes, bytes]] = []
        self._batch_lock = threading.Lock()

    def lookup_dir(self, dirpath: str) -> dict[str, CachedFile]:
        d = os.fsencode(dirpath)
        join, fsdecode = os.path.join, os.fsdecode
        out = {}
        for row in self.db.execute(
            "SELECT dir,name,size,mtime_ns,ctime_ns,inode,content,features,read_at FROM files WHERE dir=?", (d,)
        ):
            name = fsdecode(row[1])
            out[name] = CachedFile(join(dirpath, name), row)
        return out

    def lookup(self, path: str) -> CachedFile | None:
        d, name = os.path.split(path)
        return self.lookup_dir(d).get(name)

    def lookup_tree(self, dirpath: str) -> tuple[bytes, bytes] | None:
        """(signature, tree id) the previous run recorded for this folder."""
        row = self.db.execute("SELECT sig, tree FROM trees WHERE dir=?", (os.fsencode(dirpath),)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def record(self, path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int,
               content: list[bytes], features: dict[str, Any] | str | None, read_at: float) -> None:
        """Thread-safe; rows reach SQLite on ``flush`` (called from the owning thread).
        ``features`` is a dict, or already canonical JSON (passed through unparsed)."""
        d, name = os.path.split(path)
        raw = features if isinstance(features, str) or features is None else _canonical(features)
        self.record_row((os.fsencode(d), os.fsencode(name), size, mtime_ns, ctime_ns, inode, b"".join(content),
                         raw or None, read_at))

    def record_row(self, row: tuple[Any, ...]) -> None:
        """Keep a row as read by ``lookup_dir`` (``CachedFile.row``) for this run."""
        with self._batch_lock:
            self._batch.append(row)

    def record_tree(self, dirpath: str, sig: bytes, tree: bytes) -> None:
        """Thread-safe, like ``record``."""
        with self._batch_lock:
            self._tree_batch.append((os.fsencode(dirpath), sig, tree))

    def maybe_flush(self) -> None:
        """Flush once enough rows are waiting (one transaction per few thousand rows, not per
        folder); call from the owning thread."""
        if len(self._batch) + len(self._tree_batch) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        with self._batch_lock:
            batch, self._batch = self._batch, []
            trees, self._tree_batch = self._tree_batch, []
        if batch or trees:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO files_new VALUES (?,?,?,?,?,?,?,?,?)", batch)
            self.db.executemany("INSERT OR REPLACE INTO trees_new VALUES (?,?,?)", trees)
            self.db.execute("COMMIT")

    def deleted_count(self) -> int:
        """How many files of the previous snapshot are absent from this run (after ``flush``)."""
        self.flush()
        return int(self.db.execute(
            "SELECT count(*) FROM files f LEFT JOIN files_new n ON f.dir = n.dir AND f.name = n.name "
            "WHERE n.name IS NULL").fetchone()[0])

    def iter_deleted(self) -> Iterator[tuple[str, str | None]]:
        """(path, previous features JSON) of every file of the previous snapshot absent from
        this run, streamed in batches (a mass deletion must not be held in memory)."""
        self.flush()
        cur = self.db.execute(
            "SELECT f.dir, f.name, f.features FROM files f LEFT JOIN files_new n "
            "ON f.dir = n.dir AND f.name = n.name WHERE n.name IS NULL")
        while rows := cur.fetchmany(1000):
            for d, name, feats in rows:
                yield os.path.join(os.fsdecode(d), os.fsdecode(name)), feats

    def feature_type_counts(self) -> dict[str, int]:
        """Files per detected type ("t" of the features) in the previous run."""
        return {str(t): int(n) for t, n in self.db.execute(
            "SELECT json_extract(features, '$.t'), COUNT(*) FROM files "
            "WHERE features IS NOT NULL GROUP BY 1") if t is not None}

    def commit(self, snapshot: str, extra: dict[str, str] | None = None) -> None:
        """Make this run's table the reference (after the snapshot is stored)."""
        self.flush()
        self.db.execute("BEGIN")
        self.db.execute("DROP TABLE files")
        self.db.execute("ALTER TABLE files_new RENAME TO files")
        self.db.execute("DROP TABLE trees")
        self.db.execute("ALTER TABLE trees_new RENAME TO trees")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_snapshot', ?)", (snapshot,))
        for k, v in (extra or {}).items():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        self.db.execute("COMMIT")
        self.db.execute(f"CREATE TABLE files_new {FILES_COLUMNS}")
        self.db.execute(f"CREATE TABLE trees_new {TREES_COLUMNS}")

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
        self._lockfile.close()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _lock_exclusive(f: Any) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError as exc:
            raise LockedError("another backup of this repository is running") from exc
    except OSError as exc:
        raise LockedError(
            "another backup of this repository is running on this machine",
            hint="wait for it to finish; two runs at once are never allowed",
        ) from exc

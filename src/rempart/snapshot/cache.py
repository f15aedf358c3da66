"""The agent's local state cache (SQLite): what the last snapshot held, per path.

Used to skip re-reading unchanged files. "Unchanged" needs size, mtime, ctime and inode to
match (ransomware can restore mtimes and keep sizes, but not the ctime), the content blobs to
still be in the index, and the last full read to be recent enough (periodic full re-read).
A lost cache only costs reading time: dedup still avoids re-uploading known chunks.

A run leaves the reference tables (``files``, ``trees``, ``dirs``) untouched until ``commit``
and collects its own rows in TEMP tables (nothing reaches the database file, its WAL or the
disk before the snapshot is stored). A folder whose every previous row came back unchanged is
*kept*: only its name is noted, and ``commit`` leaves its rows where they are. So a backup with
nothing changed writes a few meta rows, not the whole table.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

from rempart.core.errors import is_damaged_database, local_error
from rempart.snapshot.statefiles import lock_state_folder, prefetch, set_aside
from rempart.snapshot.tree import canonical_json

FILES_COLUMNS = """(
  dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
  content BLOB, features TEXT, read_at REAL, PRIMARY KEY (dir, name)) WITHOUT ROWID"""
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
FLUSH_ROWS = 2048
#: free pages (4 KiB) from which a file at least a quarter free is compacted after a commit
COMPACT_MIN_PAGES = 256
#: unchanged rows of one folder held back (not written) while its other entries are pending; a
#: larger folder is written like a changed one (bounded memory, a little more writing)
HOLD_ROWS = 4096
#: per folder: a signature of its entries (snapshot.tree.tree_signature) and the tree id it gave
TREES_COLUMNS = "(dir BLOB PRIMARY KEY, sig BLOB, tree BLOB) WITHOUT ROWID"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files {FILES_COLUMNS};
CREATE TABLE IF NOT EXISTS trees {TREES_COLUMNS};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
#: every folder that has rows in ``files`` (so a run finds the previous folders without a scan)
DIRS_TABLE = "CREATE TABLE dirs (dir BLOB PRIMARY KEY) WITHOUT ROWID"
RUN_SCHEMA = f"""
CREATE TEMP TABLE files_new {FILES_COLUMNS};
CREATE TEMP TABLE trees_new {TREES_COLUMNS};
CREATE TEMP TABLE kept_new (dir BLOB PRIMARY KEY) WITHOUT ROWID;
"""
TYPE_COUNTS_KEY = "feature_type_counts"
#: the snapshot whose commit last maintained ``dirs`` and the type counts (another version of
#: this code may have committed since: then they are rebuilt)
LAYOUT_KEY = "dirs_snapshot"
# Previous folders this run does not keep (their rows are replaced by this run's) are
# "SELECT dir FROM main.dirs WHERE dir NOT IN (SELECT dir FROM temp.kept_new)" below.
_DELETED = ("FROM main.dirs g CROSS JOIN main.files f ON f.dir = g.dir "  # g drives: no scan of files
            "WHERE g.dir NOT IN (SELECT dir FROM temp.kept_new) AND NOT EXISTS "
            "(SELECT 1 FROM temp.files_new n WHERE n.dir = f.dir AND n.name = f.name)")
_COUNT_TYPES = "SELECT json_extract(features, '$.t'), COUNT(*) FROM main.files WHERE features IS NOT NULL GROUP BY 1"


class CachedFile(tuple):  # type: ignore[type-arg]
    """One file of the previous run: its state-cache row itself (a tuple, written back as is
    when unchanged), (dir, name, size, mtime_ns, ctime_ns, inode, content, features, read_at)
    with the fields as properties. Nothing is copied or decoded per file until asked for: a
    backup with nothing changed looks at every file's row."""

    __slots__ = ()

    size: int = property(itemgetter(2))  # type: ignore[assignment]
    mtime_ns: int = property(itemgetter(3))  # type: ignore[assignment]
    ctime_ns: int = property(itemgetter(4))  # type: ignore[assignment]
    inode: int = property(itemgetter(5))  # type: ignore[assignment]

    @property
    def dirpath(self) -> str:
        return os.fsdecode(self[0])

    @property
    def name(self) -> str:
        return os.fsdecode(self[1])

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, self.name)

    @property
    def content(self) -> list[bytes]:
        """The content blob ids (a new list each time)."""
        raw = self[6] or b""
        # most files are one chunk: no loop for them
        return [raw] if len(raw) == 32 else [raw[i : i + 32] for i in range(0, len(raw), 32)]

    @property
    def features_raw(self) -> str | None:
        """Canonical JSON of the detection features, parsed only when needed."""
        return self[7] or None

    @property
    def read_at(self) -> float:
        return self[8] or 0.0

    @property
    def features(self) -> dict[str, Any] | None:
        raw = self[7]
        return json.loads(raw) if raw else None


class _Dir:
    """This run's rows of one folder until its tree is recorded."""

    __slots__ = ("dirty", "prev", "rows")

    def __init__(self, prev: int | None) -> None:
        self.prev = prev  # rows the previous run had for it (None: not looked up)
        self.rows: list[tuple[Any, ...]] = []  # unchanged rows held back
        self.dirty = False  # some row is new or changed, or too many were held: write them all


class StateCache:
    """Single-writer: one backup at a time per repository (a lock file enforces it).

    Rows are read one folder at a time (one query per folder, not per file). Unchanged rows
    wait per folder; when the folder's tree is recorded (after all its entries) the folder is
    either kept (all previous rows back, none changed: nothing to write) or its rows join the
    batch written to the run's TEMP table.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lockfile = lock_state_folder(folder)
        path = folder / "cache.sqlite"
        #: where a damaged cache file was moved (this run then starts from an empty cache)
        self.set_aside: Path | None = None
        try:
            try:
                self._open(path)
            except sqlite3.DatabaseError as exc:
                if not is_damaged_database(exc):
                    raise
                self.db.close()  # the connection is made before the first statement fails
                self.set_aside = set_aside(path)
                self._open(path)
        except (OSError, sqlite3.Error) as exc:
            self._lockfile.close()
            raise local_error(f"state cache {path}", exc) from exc
        self._batch: list[tuple[Any, ...]] = []
        self._tree_batch: list[tuple[bytes, bytes, bytes]] = []
        self._kept: list[bytes] = []
        self._undecided: list[tuple[bytes, _Dir]] = []  # finished folders never looked up
        self._dirs: dict[bytes, _Dir] = {}
        self._batch_lock = threading.Lock()

    def _open(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        prefetch(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA temp_store=FILE")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "files" in tables and "dir" not in {r[1] for r in self.db.execute("PRAGMA table_info(files)")}:
            self.db.execute("DROP TABLE files")  # an older layout: start afresh (costs one full read)
            self.db.execute("DROP TABLE IF EXISTS dirs")
            tables -= {"files", "dirs"}
        if not {"files", "trees", "meta"} <= tables:
            self.db.executescript(SCHEMA)
        if "dirs" not in tables or self.get_meta("last_snapshot") != self.get_meta(LAYOUT_KEY):
            self._rebuild_dirs("dirs" not in tables)
        for old in ("files_new", "trees_new"):  # the previous layout kept the run's rows here
            if old in tables:
                self.db.execute(f"DROP TABLE main.{old}")
        self.db.executescript(RUN_SCHEMA)

    def _rebuild_dirs(self, create: bool) -> None:
        self.db.execute("BEGIN")
        if create:
            self.db.execute(DIRS_TABLE)
        else:
            self.db.execute("DELETE FROM dirs")
        self.db.execute("INSERT INTO dirs SELECT DISTINCT dir FROM files")
        self.db.execute("DELETE FROM meta WHERE key=?", (TYPE_COUNTS_KEY,))
        self.db.execute("COMMIT")

    # --- the previous run ---------------------------------------------------------------

    def lookup_dir(self, dirpath: str) -> dict[str, CachedFile]:
        d = os.fsencode(dirpath)
        out = {}
        for row in self.db.execute(
            "SELECT dir,name,size,mtime_ns,ctime_ns,inode,content,features,read_at FROM main.files WHERE dir=?", (d,)
        ):
            out[row[1].decode(_FS_ENCODING, _FS_ERRORS)] = CachedFile(row)  # (os.fsdecode, unchecked)
        with self._batch_lock:
            st = self._dirs.get(d)
            if st is None:
                self._dirs[d] = _Dir(len(out))
            else:
                st.prev = len(out)
        return out

    def lookup(self, path: str) -> CachedFile | None:
        d, name = os.path.split(path)
        return self.lookup_dir(d).get(name)

    def lookup_tree(self, dirpath: str) -> tuple[bytes, bytes] | None:
        """(signature, tree id) the previous run recorded for this folder."""
        row = self.db.execute("SELECT sig, tree FROM main.trees WHERE dir=?", (os.fsencode(dirpath),)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def feature_type_counts(self) -> dict[str, int]:
        """Files per detected type ("t" of the features) in the previous run."""
        raw = self.get_meta(TYPE_COUNTS_KEY)
        if raw is not None:
            return {str(t): int(n) for t, n in json.loads(raw).items()}
        return {str(t): int(n) for t, n in self.db.execute(
            _COUNT_TYPES) if t is not None}

    # --- this run -----------------------------------------------------------------------

    def record(self, path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int,
               content: list[bytes], features: dict[str, Any] | str | None, read_at: float) -> None:
        """A file read in this run. Thread-safe; rows reach SQLite on ``flush`` (called from
        the owning thread). ``features`` is a dict, or already canonical JSON (passed through
        unparsed)."""
        d, name = os.path.split(path)
        raw = features if isinstance(features, str) or features is None else canonical_json(features)
        bd = os.fsencode(d)
        row = (bd, os.fsencode(name), size, mtime_ns, ctime_ns, inode, b"".join(content), raw or None, read_at)
        with self._batch_lock:
            st = self._dirs.get(bd)
            if st is None:
                st = self._dirs[bd] = _Dir(None)
            if not st.dirty:
                self._make_dirty(st)
            self._batch.append(row)

    def record_row(self, row: tuple[Any, ...]) -> None:
        """A file unchanged since the previous run, as read by ``lookup_dir`` (a ``CachedFile``)."""
        with self._batch_lock:
            st = self._dirs.get(row[0])
            if st is None:
                st = self._dirs[row[0]] = _Dir(None)
            if st.dirty:
                self._batch.append(row)
                return
            st.rows.append(row)
            if len(st.rows) > HOLD_ROWS:
                self._make_dirty(st)

    def record_tree(self, dirpath: str, sig: bytes, tree: bytes) -> None:
        """A folder is complete (called after every entry of it was recorded); thread-safe."""
        d = os.fsencode(dirpath)
        with self._batch_lock:
            self._tree_batch.append((d, sig, tree))
            st = self._dirs.pop(d, None)
            if st is None:
                st = _Dir(None)
            if st.dirty:
                return
            if st.prev is None:
                self._undecided.append((d, st))
            elif len(st.rows) == st.prev:
                self._kept.append(d)
            else:
                self._batch.extend(st.rows)

    def _make_dirty(self, st: _Dir) -> None:
        st.dirty = True
        self._batch.extend(st.rows)
        st.rows = []

    def maybe_flush(self) -> None:
        """Flush once enough rows are waiting (one transaction per few thousand rows, not per
        folder); call from the owning thread."""
        if len(self._batch) + len(self._tree_batch) + len(self._kept) >= FLUSH_ROWS:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Write what waits to the run's TEMP tables. ``final``: the walk is over, so folders
        still open (rows recorded without ``record_tree``) are written as changed."""
        with self._batch_lock:
            if final:
                for st in self._dirs.values():
                    self._batch.extend(st.rows)
                self._dirs.clear()
            batch, self._batch = self._batch, []
            trees, self._tree_batch = self._tree_batch, []
            kept, self._kept = self._kept, []
            undecided, self._undecided = self._undecided, []
        for d, st in undecided:  # folders made of backup paths, not listed: compare counts
            (n,) = self.db.execute("SELECT COUNT(*) FROM main.files WHERE dir=?", (d,)).fetchone()
            if len(st.rows) == n:
                kept.append(d)
            else:
                batch.extend(st.rows)
        if batch or trees or kept:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO temp.files_new VALUES (?,?,?,?,?,?,?,?,?)", batch)
            self.db.executemany("INSERT OR REPLACE INTO temp.trees_new VALUES (?,?,?)", trees)
            self.db.executemany("INSERT OR IGNORE INTO temp.kept_new VALUES (?)", ((d,) for d in kept))
            self.db.execute("COMMIT")

    def reset_run(self) -> None:
        """Forget what this run recorded (the caller runs the backup once more)."""
        with self._batch_lock:
            self._batch, self._tree_batch, self._kept, self._undecided = [], [], [], []
            self._dirs.clear()
        self.db.execute("DELETE FROM temp.files_new")
        self.db.execute("DELETE FROM temp.trees_new")
        self.db.execute("DELETE FROM temp.kept_new")

    def deleted_count(self) -> int:
        """How many files of the previous snapshot are absent from this run (call once the walk
        is over)."""
        self.flush(final=True)
        return int(self.db.execute("SELECT count(*) " + _DELETED).fetchone()[0])

    def iter_deleted(self) -> Iterator[tuple[str, str | None]]:
        """(path, previous features JSON) of every file of the previous snapshot absent from
        this run, streamed in batches (a mass deletion must not be held in memory)."""
        self.flush(final=True)
        cur = self.db.execute("SELECT f.dir, f.name, f.features " + _DELETED)
        while rows := cur.fetchmany(1000):
            for d, name, feats in rows:
                yield os.path.join(os.fsdecode(d), os.fsdecode(name)), feats

    def commit(self, snapshot: str, extra: dict[str, str] | None = None) -> None:
        """Make this run the reference (after the snapshot is stored), in one transaction:
        the rows of folders not kept are replaced by this run's, kept folders are not touched."""
        self.flush(final=True)
        db = self.db
        db.execute("BEGIN")
        counts = self._counts_after_commit()
        db.execute("DELETE FROM main.files WHERE dir IN ("
                   "SELECT dir FROM main.dirs WHERE dir NOT IN (SELECT dir FROM temp.kept_new))")
        db.execute("DELETE FROM main.dirs WHERE dir NOT IN (SELECT dir FROM temp.kept_new)")
        db.execute("INSERT OR REPLACE INTO main.files SELECT * FROM temp.files_new")
        db.execute("INSERT OR IGNORE INTO main.dirs SELECT DISTINCT dir FROM temp.files_new")
        if counts is None:
            counts = Counter({str(t): int(n) for t, n in db.execute(
                _COUNT_TYPES) if t is not None})
        db.execute("DELETE FROM main.trees WHERE dir NOT IN (SELECT dir FROM temp.trees_new)")
        db.execute("INSERT OR REPLACE INTO main.trees SELECT * FROM temp.trees_new n WHERE NOT EXISTS "
                   "(SELECT 1 FROM main.trees t WHERE t.dir = n.dir AND t.sig = n.sig AND t.tree = n.tree)")
        meta = {"last_snapshot": snapshot, LAYOUT_KEY: snapshot, TYPE_COUNTS_KEY: canonical_json({t: n for t, n in counts.items() if n > 0})}
        for k, v in (meta | (extra or {})).items():
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        db.execute("COMMIT")
        self.reset_run()
        self._compact()

    def _compact(self) -> None:
        """Rewrite the file when much of it is free pages (a cache the previous layout wrote:
        half its pages were free and its rows half-filled theirs): a smaller file to read on a
        cold start. Rare: a run reuses the pages it frees."""
        (pages,) = self.db.execute("PRAGMA main.page_count").fetchone()
        (free,) = self.db.execute("PRAGMA main.freelist_count").fetchone()
        if free >= COMPACT_MIN_PAGES and free * 4 >= pages:
            self.db.execute("VACUUM main")

    def _counts_after_commit(self) -> Counter[str] | None:
        """The feature type counts once this run is committed, from the stored counts (None
        when there are none yet): minus the rows replaced, plus this run's rows."""
        raw = self.get_meta(TYPE_COUNTS_KEY)
        if raw is None:
            return None
        counts = Counter({str(t): int(n) for t, n in json.loads(raw).items()})
        removed = ("SELECT json_extract(features, '$.t'), COUNT(*) FROM main.files WHERE dir IN ("
                   "SELECT dir FROM main.dirs WHERE dir NOT IN (SELECT dir FROM temp.kept_new)) GROUP BY 1",
                   "SELECT json_extract(f.features, '$.t'), COUNT(*) FROM temp.files_new n JOIN main.files f "
                   "ON f.dir = n.dir AND f.name = n.name WHERE n.dir NOT IN ("
                   "SELECT dir FROM main.dirs WHERE dir NOT IN (SELECT dir FROM temp.kept_new)) GROUP BY 1")
        for query in removed:
            for t, n in self.db.execute(query):
                if t is not None:
                    counts[str(t)] -= n
        for t, n in self.db.execute("SELECT json_extract(features, '$.t'), COUNT(*) FROM temp.files_new GROUP BY 1"):
            if t is not None:
                counts[str(t)] += n
        return counts

    # --- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
        self._lockfile.close()


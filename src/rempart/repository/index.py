"""The blob index (blob id -> pack, type, offset, length), on disk.

It lives in SQLite so that memory does not grow with the number of blobs: a repository of
200,000 small files has 200,000+ blobs, and a Python dict of them costs ~300 bytes each.

:class:`BlobIndex` is a *cache* of the pack headers (index files are another cache of the
same). Without a path it is a private temporary database that SQLite deletes on close; with a
path (the agent's state folder) it persists between runs, so a backup downloads only the index
files it has not seen yet. It is never trusted beyond dedup: ``Repository.load_index`` drops
packs the storage no longer lists, and the vault refuses a snapshot whose blobs it does not
hold.

It is safe to use from several threads (one connection, one lock). The ids a snapshot will
reference are collected apart, in :class:`rempart.repository.refset.RefSet`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from rempart.core.errors import RepositoryError, local_error
from rempart.repository.format import BLOB_TYPES, BlobType, PackEntry, parse_index

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (pid INTEGER PRIMARY KEY, id BLOB UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY, pid INTEGER NOT NULL, type INTEGER NOT NULL, off INTEGER NOT NULL,
    len INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pid ON blobs (pid);
CREATE TABLE IF NOT EXISTS index_files (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""
#: SQLite page cache of the blob index: holds the b-tree's inner pages and some leaves (a pack's
#: rows are inserted in id order, so each leaf is visited once per pack whatever the cache size)
_CACHE_KIB = 2048
#: single lookups answered by a query before the Bloom filter is built (building it reads
#: every row: ~8 us per blob, against ~5 us per query)
DIRECT_LOOKUPS = 2048
_BATCH = 500  # ids per IN (...) query (SQLite allows 999 parameters on old builds)


class _Bloom:
    """A Bloom filter over blob ids (uniformly random keyed hashes, so three 4-byte slices of
    the id serve as the hash values). Answers most "is this new chunk known?" questions
    without a query. Sized for ``expected`` ids at 16 bits each (under 0.5 % false
    positives), from 128 KiB up to 4 MiB (under 1 % up to ~2.5 million blobs); the index
    builds a larger one once it holds more ids than that. Allocated only when first needed
    (a backup where nothing changed needs none)."""

    MIN_BITS = 1 << 20
    MAX_BITS = 1 << 25
    BITS_PER_ID = 16

    def __init__(self, expected: int = 0) -> None:
        bits = self.MIN_BITS
        while bits < expected * self.BITS_PER_ID and bits < self.MAX_BITS:
            bits <<= 1
        self._bits = bytearray(bits >> 3)
        self._mask = bits - 1
        #: ids it was sized for (unbounded at the largest size)
        self.capacity = bits // self.BITS_PER_ID if bits < self.MAX_BITS else 1 << 62
        self.count = 0

    def add(self, bid: bytes) -> None:
        b, m = self._bits, self._mask
        v = int.from_bytes(bid[:12], "little")
        h = v & m
        b[h >> 3] |= 1 << (h & 7)
        h = (v >> 32) & m
        b[h >> 3] |= 1 << (h & 7)
        h = (v >> 64) & m
        b[h >> 3] |= 1 << (h & 7)
        self.count += 1

    def __contains__(self, bid: bytes) -> bool:
        b, m = self._bits, self._mask
        v = int.from_bytes(bid[:12], "little")
        h = v & m
        if not b[h >> 3] & (1 << (h & 7)):
            return False
        h = (v >> 32) & m
        if not b[h >> 3] & (1 << (h & 7)):
            return False
        h = (v >> 64) & m
        return bool(b[h >> 3] & (1 << (h & 7)))


class BlobLocation(NamedTuple):
    pack: bytes
    type: BlobType
    offset: int
    length: int


def _connect(path: Path | None, cache_kib: int = _CACHE_KIB) -> sqlite3.Connection:
    db = sqlite3.connect(str(path) if path else "", check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA cache_size = -{cache_kib}")
    db.execute("PRAGMA temp_store = FILE")
    if path:
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # a cache: a lost last commit is rebuilt
    else:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
    return db


class BlobIndex:
    def __init__(self, path: Path | None = None, *, repo_id: str = "") -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            try:
                self._db = self._open(path, repo_id)
            except sqlite3.DatabaseError:
                if path is None:
                    raise
                # a damaged cache is thrown away and rebuilt from the repository
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
                self._db = self._open(path, repo_id)
        except (OSError, sqlite3.Error) as exc:  # e.g. the state folder's disk is full
            raise local_error(f"index cache {path or 'in memory'}", exc) from exc
        #: built once ``DIRECT_LOOKUPS`` single lookups were answered by a query (a no-change
        #: run needs none)
        self._bloom: _Bloom | None = None
        self._direct = 0
        row = self._db.execute("SELECT v FROM meta WHERE k = 'intact'").fetchone()
        #: True while every blob of the agent's last committed snapshot is known to be indexed:
        #: set by :meth:`mark_intact` after a commit, cleared whenever a pack is forgotten or
        #: the index is emptied or rebuilt. Lets unchanged files skip the per-blob lookups.
        self.intact = row is not None and row[0] == "1"

    @staticmethod
    def _open(path: Path | None, repo_id: str) -> sqlite3.Connection:
        db = _connect(path)
        db.executescript(_SCHEMA)
        row = db.execute("SELECT v FROM meta WHERE k = 'repo'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('repo', ?), ('schema', ?)", (repo_id, SCHEMA_VERSION))
        elif row[0] != repo_id:
            db.close()
            raise RepositoryError("the index cache belongs to another repository; remove it")
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- lookups ------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM blobs").fetchone()[0])

    def build_filter(self) -> None:
        """Build the Bloom filter now (else it is built after ``DIRECT_LOOKUPS`` lookups)."""
        self._filter()

    def _filter(self) -> _Bloom:
        bloom = self._bloom
        if bloom is None:
            with self._lock:
                bloom = self._bloom
                if bloom is None:
                    bloom = self._build_filter(0)
        return bloom

    def _build_filter(self, at_least: int) -> _Bloom:
        """A filter of every indexed id, sized for twice their number (the caller holds the lock)."""
        (n,) = self._db.execute("SELECT count(*) FROM blobs").fetchone()
        bloom = _Bloom(2 * max(n, at_least))
        for (bid,) in self._db.execute("SELECT id FROM blobs"):
            bloom.add(bid)
        self._bloom = bloom
        return bloom

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes):
            return False
        if self._bloom is None and self._direct < DIRECT_LOOKUPS:
            # a few lookups (a backup with little changed: the trees above a changed file)
            # cost less than building the filter from every row
            self._direct += 1
        elif blob_id not in self._filter():
            return False
        with self._lock:
            return self._db.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is not None

    def _rows_in(self, select: str, ids: list[bytes]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``select ... WHERE blobs.id IN (ids)``, one query per batch of ids."""
        for k in range(0, len(ids), _BATCH):
            part = ids[k : k + _BATCH]
            with self._lock:
                rows = self._db.execute(f"{select} WHERE blobs.id IN ({','.join('?' * len(part))})", part).fetchall()
            yield from rows

    def contains_all(self, ids: Iterable[bytes]) -> bool:
        """Whether every id is indexed: one query per batch of ids, not one per id."""
        unique = list(set(ids))
        if self._bloom is None and self._direct < DIRECT_LOOKUPS:
            self._direct += len(unique)
        else:
            bloom = self._filter()
            if not all(i in bloom for i in unique):
                return False
        return sum(1 for _ in self._rows_in("SELECT id FROM blobs", unique)) == len(unique)

    def get(self, blob_id: bytes) -> BlobLocation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT packs.id, type, off, len FROM blobs JOIN packs USING (pid) WHERE blobs.id = ?",
                (blob_id,)).fetchone()
        return None if row is None else BlobLocation(row[0], BLOB_TYPES[row[1]], row[2], row[3])

    def get_many(self, ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """Locations of the indexed ones among ``ids``: one query per batch of ids."""
        rows = self._rows_in("SELECT blobs.id, packs.id, type, off, len FROM blobs JOIN packs USING (pid)",
                             list(set(ids)))
        return {bid: BlobLocation(pack, BLOB_TYPES[t], off, n) for bid, pack, t, off, n in rows}

    def has_pack(self, pack_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM packs WHERE id = ?", (pack_id,)).fetchone() is not None

    def pack_end(self, pack_id: bytes) -> int | None:
        """Where the indexed blobs of ``pack_id`` end: where its header begins, when the blob
        that ends the pack is indexed here (a blob kept at another location is not); None for
        a pack without indexed blobs. A hint to check, never trusted."""
        with self._lock:
            row = self._db.execute("SELECT max(off + len) FROM blobs WHERE pid = "
                                   "(SELECT pid FROM packs WHERE id = ?)", (pack_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def pack_ids(self) -> Iterator[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM packs ORDER BY id").fetchall()
        return (r[0] for r in rows)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """Every blob, in id order, fetched in batches (never all at once)."""
        last = b""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT blobs.id, packs.id, type, off, len FROM blobs JOIN packs USING (pid) "
                    "WHERE blobs.id > ? ORDER BY blobs.id LIMIT 4096", (last,)).fetchall()
            if not rows:
                return
            for bid, pack, t, off, n in rows:
                yield bid, BlobLocation(pack, BLOB_TYPES[t], off, n)
            last = rows[-1][0]

    # --- updates ------------------------------------------------------------------------

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry], *, commit: bool = True) -> None:
        """Record a pack's blobs; a blob already known keeps its first location. Without
        ``commit`` the rows join an open transaction, which :meth:`commit` ends: they answer
        lookups at once, and the b-tree pages they touch are written once per transaction, not
        once per pack (blob ids are random: a pack touches most leaves)."""
        with self._lock:
            if commit:
                with self._db:  # committed, or rolled back on an error (as before commit=False existed)
                    self._begin()
                    self._add_packs([(pack_id, entries)])
            else:
                self._begin()
                self._add_packs([(pack_id, entries)])

    def commit(self) -> None:
        """End the transaction ``add_pack(commit=False)`` left open, if any."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    def _add_packs(self, packs: Iterable[tuple[bytes, Iterable[PackEntry]]]) -> None:
        db = self._db
        rows = []
        for pack_id, entries in packs:
            db.execute("INSERT OR IGNORE INTO packs (id) VALUES (?)", (pack_id,))
            (pid,) = db.execute("SELECT pid FROM packs WHERE id = ?", (pack_id,)).fetchone()
            rows += [(e.id, pid, int(e.type), e.offset, e.length) for e in entries]
        # in id order: each b-tree leaf is visited once (random order costs ~30 % more CPU and
        # needs a larger page cache for the same speed); a blob in two packs keeps the first
        rows.sort(key=lambda r: r[0])
        db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?)", rows)
        bloom = self._bloom
        if bloom is not None:  # else it is built from the table when first needed
            if bloom.count + len(rows) > bloom.capacity:
                self._build_filter(bloom.count + len(rows))  # the new rows are in the table already
            else:
                for r in rows:
                    bloom.add(r[0])

    def has_index_file(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM index_files WHERE name = ?", (name,)).fetchone() is not None

    def note_index_file(self, name: str) -> None:
        """Record an index file this process wrote (its packs were added as they uploaded)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO index_files VALUES (?)", (name,))

    def add_index_file(self, data: bytes, name: str | None = None, *, only: set[bytes] | None = None) -> int:
        """Record the packs an index file lists (all, or those in ``only``), parsed fully before
        anything is written; returns the number of packs recorded."""
        packs = [(p, e) for p, e in parse_index(data) if only is None or p in only]
        with self._lock, self._db:
            self._begin()
            self._add_packs(packs)
            if name is not None:
                self._db.execute("INSERT OR IGNORE INTO index_files VALUES (?)", (name,))
        return len(packs)

    def _set_intact(self, value: bool) -> None:
        self.intact = value
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('intact', ?)", ("1" if value else "0",))

    def mark_intact(self) -> None:
        """Call after a snapshot whose every blob was indexed has been committed."""
        with self._lock:
            self._set_intact(True)

    def retain_packs(self, present: set[bytes]) -> int:
        """Forget packs that are not in ``present`` (removed by garbage collection); returns
        how many were forgotten."""
        gone = [p for p in self.pack_ids() if p not in present]
        with self._lock, self._db:
            self._begin()
            for p in gone:
                (pid,) = self._db.execute("SELECT pid FROM packs WHERE id = ?", (p,)).fetchone()
                self._db.execute("DELETE FROM blobs WHERE pid = ?", (pid,))
                self._db.execute("DELETE FROM packs WHERE pid = ?", (pid,))
            if gone:
                self._set_intact(False)
        return len(gone)

    def clear(self) -> None:
        with self._lock, self._db:
            self._begin()
            for table in ("blobs", "packs", "index_files"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self._set_intact(False)
            self._bloom = None

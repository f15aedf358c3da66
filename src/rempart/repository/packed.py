"""A read-only blob index in one sorted table, for commands that only read (restore, ls, diff).

The agent's index (:class:`rempart.repository.index.BlobIndex`) is a SQLite table, because a
backup adds packs as it goes and keeps the table between runs. A restore on a wiped machine
builds its index once from every index file and then only looks blobs up: inserting the
43,945 blobs of the 2 GiB practice folder's repository into SQLite took ~0.26 s of the
~0.45 s the index took to load, all before the first file could be restored
(docs/benchmarks.md, "Session 9").

Here every blob is one fixed-size record, ``id (32 bytes) || pack number (u32) || type (u8) ||
offset (u32) || length (u32)``, big-endian, and the records are sorted as bytes: by id, then
by pack number (numbered as first seen), keeping the order they were added in among equal
ones, so that of a blob listed twice the first one read wins, as in ``BlobIndex``. A directory of the 65,536 two-byte id prefixes gives the records of each
prefix (blob ids are keyed hashes, uniformly spread), and a binary search among them finds
an id. 45 bytes per blob, plus 256 KiB; no per-blob Python object is kept.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable

from rempart.core.errors import IntegrityError
from rempart.repository.format import BLOB_TYPES, PackEntry, parse_index_raw
from rempart.repository.index import BlobLocation

_REC = struct.Struct(">32sIBII")
_LOC = struct.Struct(">IBII")  # the record after its id
_ID = 32
_PREFIXES = 1 << 16


def _id_and_pack(record: bytes) -> bytes:
    return record[: _ID + 4]



class PackedIndexBuilder:
    """Collects index files and pack headers, then :meth:`build` sorts them once."""

    def __init__(self) -> None:
        self._packs: list[bytes] = []
        self._numbers: dict[bytes, int] = {}
        self._records: list[bytes] = []
        self._ends: dict[bytes, int] = {}

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._numbers

    def add_index_file(self, data: bytes, name: str | None = None, *, only: set[bytes] | None = None) -> int:
        """Record the packs an index file lists (all, or those in ``only``), parsed and checked
        fully before any is recorded; returns the number of packs recorded. (``name``: as
        ``BlobIndex.add_index_file``; nothing remembers it here.)"""
        sections = [(p, rows) for p, rows in parse_index_raw(data) if only is None or p in only]
        for pack_id, rows in sections:
            self._add(pack_id, rows)
        return len(sections)

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        """Record a pack from its header (a pack no index file names)."""
        self._add(pack_id, [(int(e.type), e.id, e.offset, e.length) for e in entries])

    def _add(self, pack_id: bytes, rows: list[tuple[int, bytes, int, int]]) -> None:
        number = self._numbers.get(pack_id)
        if number is None:
            number = self._numbers[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        pack = _REC.pack
        self._records += [pack(bid, number, t, off, n) for t, bid, off, n in rows]
        end = max((off + n for _t, _bid, off, n in rows), default=None)
        if end is not None and end > self._ends.get(pack_id, -1):
            self._ends[pack_id] = end

    def build(self) -> PackedIndex:
        records = self._records
        self._records = []
        records.sort(key=_id_and_pack)  # stable: of equal ones, the first added is kept first
        table = b"".join(records)
        starts = array("I", bytes(4 * (_PREFIXES + 1)))
        # starts[p] = the first record whose 2-byte prefix is >= p: count each prefix, then sum
        counts = [0] * _PREFIXES
        for k in range(0, len(table), _REC.size):
            counts[(table[k] << 8) | table[k + 1]] += 1
        at = 0
        for p, c in enumerate(counts):
            starts[p] = at
            at += c
        starts[_PREFIXES] = at
        return PackedIndex(table, starts, self._packs, self._ends)


class PackedIndex:
    """The lookups a reading command needs (``get``, ``get_many``, ``pack_end``), over the
    sorted table a :class:`PackedIndexBuilder` made. Immutable, so shared by threads freely."""

    def __init__(self, table: bytes, starts: array[int], packs: list[bytes], ends: dict[bytes, int]) -> None:
        self._table, self._starts, self._packs, self._ends = table, starts, packs, ends

    def __len__(self) -> int:
        """Records, counting a blob stored in two packs twice."""
        return len(self._table) // _REC.size

    def _find(self, blob_id: bytes) -> int:
        """The offset of ``blob_id``'s first record, or -1."""
        if len(blob_id) != _ID:
            return -1
        p = (blob_id[0] << 8) | blob_id[1]
        lo, hi = self._starts[p], self._starts[p + 1]
        end, size, table = hi, _REC.size, self._table
        while lo < hi:  # the leftmost record whose id is not below blob_id
            mid = (lo + hi) >> 1
            at = mid * size
            if table[at : at + _ID] < blob_id:
                lo = mid + 1
            else:
                hi = mid
        at = lo * size
        return at if lo < end and table[at : at + _ID] == blob_id else -1

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and self._find(blob_id) >= 0

    def get(self, blob_id: bytes) -> BlobLocation | None:
        at = self._find(blob_id)
        if at < 0:
            return None
        number, t, off, n = _LOC.unpack_from(self._table, at + _ID)
        try:
            return BlobLocation(self._packs[number], BLOB_TYPES[t], off, n)
        except KeyError as exc:  # parse_index_raw checked every type: unreachable unless a bug
            raise IntegrityError(f"blob {blob_id.hex()[:12]} has an unknown type {t}") from exc

    def get_many(self, ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """Locations of the indexed ones among ``ids``."""
        found = {}
        for bid in set(ids):
            loc = self.get(bid)
            if loc is not None:
                found[bid] = loc
        return found

    def pack_end(self, pack_id: bytes) -> int | None:
        """Where the listed blobs of ``pack_id`` end: where its header begins (as
        ``BlobIndex.pack_end``, a hint to check, never trusted); None for an unknown pack."""
        return self._ends.get(pack_id)

    def close(self) -> None:
        """Nothing to release (the same call as ``BlobIndex.close``)."""

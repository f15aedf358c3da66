"""The reference set: the ids a snapshot will reference, collected in any order and yielded
sorted and unique (a flat buffer spilled to sorted temporary runs), in bounded memory. Safe to
fill from several threads."""

from __future__ import annotations

import tempfile
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import IO

from rempart.core.errors import RepositoryError


class RefSet:
    """A multiset of 32-byte blob ids, iterated sorted and unique, in bounded memory.

    Ids are appended to one flat buffer (no object and no SQL statement per id: a backup with
    nothing changed adds every id of the snapshot again). Every ``run_ids`` ids the buffer is
    sorted, deduplicated and written to an anonymous temporary file as one sorted run; every
    ``fan_in`` runs of one size are merged into one run of the next size (an external merge
    sort: each id is merged about log32(ids / run_ids) times; a merge sorts batches bounded by
    the runs' current blocks, see ``_merge``). Iteration merges what is left.
    Memory stays at a few hundred KiB whatever the number of blobs, and a crash leaves no file
    behind (the runs are unlinked from the start). Not to be updated while iterated."""

    #: ids per run written from the buffer: 1 Ki ids = 32 KiB (~75 KiB while sorted)
    run_ids = 1024
    #: runs of one level merged into one run of the next
    fan_in = 32
    #: ids read at once from each run while merging (4 KiB)
    read_ids = 128

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # one seek + read of a run at a time
        self._buf = bytearray()
        #: per level, the sorted unique runs (file, bytes) not merged yet
        self._levels: list[list[tuple[IO[bytes], int]]] = []
        self._closed = False

    def add(self, blob_id: bytes) -> None:
        self.update((blob_id,))

    def update(self, ids: Iterable[bytes]) -> None:
        data = b"".join(ids)
        if len(data) % 32:
            raise ValueError("blob ids are 32 bytes")
        with self._lock:
            if self._closed:
                raise ValueError("the reference set is closed")
            self._buf += data
            if len(self._buf) >= 32 * self.run_ids:
                ids_sorted = _sorted(self._buf)
                self._buf = bytearray()
                self._push(0, [_unique(ids_sorted)])

    def _push(self, level: int, batches: Iterable[list[bytes]]) -> None:
        """Write a sorted unique run (given as consecutive sorted batches) at ``level``; merge
        the level once it is full."""
        f = tempfile.TemporaryFile(prefix="rempart-refs-")
        size = 0
        for batch in batches:
            data = b"".join(batch)
            f.write(data)
            size += len(data)
        f.flush()
        if level == len(self._levels):
            self._levels.append([])
        runs = self._levels[level]
        runs.append((f, size))
        if len(runs) >= self.fan_in:
            self._levels[level] = []
            try:
                self._push(level + 1, _merge([self._blocks(g, n) for g, n in runs], []))
            finally:
                for g, _ in runs:
                    g.close()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[bytes]:
        """Sorted, each id once."""
        with self._lock:
            if self._closed:
                raise ValueError("the reference set is closed")
            tail = _sorted(self._buf)
            runs = [r for level in self._levels for r in level]
        for batch in _merge([self._blocks(f, n) for f, n in runs], tail):
            yield from batch

    def _blocks(self, f: IO[bytes], size: int) -> Iterator[list[bytes]]:
        """A run's ids, ``read_ids`` at a time."""
        step = 32 * self.read_ids
        for pos in range(0, size, step):
            with self._io_lock:  # (os.pread would do, but not on Windows)
                f.seek(pos)
                block = f.read(min(step, size - pos))
            if len(block) != min(step, size - pos):
                raise RepositoryError("a temporary file of blob references was cut short")
            yield [block[k : k + 32] for k in range(0, len(block), 32)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._buf = bytearray()
            for level in self._levels:
                for f, _ in level:
                    f.close()
            self._levels = []


def _sorted(buf: bytes | bytearray) -> list[bytes]:
    data = bytes(buf)
    ids = [data[k : k + 32] for k in range(0, len(data), 32)]
    ids.sort()
    return ids


def _unique(ids: list[bytes]) -> list[bytes]:
    """``ids`` sorted: each once."""
    return [b for k, b in enumerate(ids) if k == 0 or b != ids[k - 1]]


def _merge(runs: list[Iterator[list[bytes]]], tail: list[bytes]) -> Iterator[list[bytes]]:
    """Merge sorted runs (each given block by block) and the sorted list ``tail`` into
    consecutive sorted batches, each id once. Every step takes, from each run's current block
    and from ``tail``, the ids up to the smallest last id of the runs' current blocks (no later
    block holds a smaller one) and sorts them together, so the work per id is C code (bisect,
    sort), not a Python-level heap; a batch holds at most one block per run plus ``tail``."""
    cursors: list[tuple[list[bytes], int, Iterator[list[bytes]]]] = []
    for blocks in runs:
        first = next(blocks, None)
        if first:
            cursors.append((first, 0, blocks))
    t = 0
    while cursors:
        bound = min(block[-1] for block, _, _ in cursors)
        batch: list[bytes] = []
        kept = []
        for block, pos, blocks in cursors:
            cut = bisect_right(block, bound, pos)
            batch += block[pos:cut]
            if cut == len(block):
                nxt = next(blocks, None)
                if nxt:
                    kept.append((nxt, 0, blocks))
            else:
                kept.append((block, cut, blocks))
        cursors = kept
        cut = bisect_right(tail, bound, t)
        batch += tail[t:cut]
        t = cut
        batch.sort()
        yield _unique(batch)
    if t < len(tail):
        yield _unique(tail[t:])

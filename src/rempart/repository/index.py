"""The in-memory master index: blob id -> (pack, type, offset, length).

Loaded from index files (a cache of pack headers) and updated as packs are written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from rempart.repository.format import BlobType, PackEntry, parse_index


class BlobLocation(NamedTuple):
    pack: bytes
    type: BlobType
    offset: int
    length: int


class MasterIndex:
    def __init__(self) -> None:
        self._blobs: dict[bytes, BlobLocation] = {}
        self._lock = threading.Lock()
        self.packs: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            self.packs.add(pack_id)
            for e in entries:
                self._blobs.setdefault(e.id, BlobLocation(pack_id, e.type, e.offset, e.length))

    def add_index_file(self, data: bytes) -> int:
        n = 0
        for pack_id, entries in parse_index(data):
            self.add_pack(pack_id, entries)
            n += 1
        return n

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        return iter(list(self._blobs.items()))

    def ids(self) -> set[bytes]:
        return set(self._blobs)

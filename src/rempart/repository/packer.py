"""Packer: collects sealed blobs of one backup run into pack files."""

from __future__ import annotations

import hashlib

from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType, PackEntry, encode_header_body, pack_trailer


class Packer:
    """Not thread-safe; the write session serialises access."""

    def __init__(self, key: DataKey, envelope: bytes) -> None:
        self._key = key
        self._envelope = envelope
        self._parts: list[bytes | bytearray | memoryview] = []
        self._entries: list[tuple[int, bytes, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, btype: BlobType, blob_id: bytes, sealed: bytes | bytearray | memoryview) -> None:
        self._parts.append(sealed)
        self._entries.append((int(btype), blob_id, len(sealed)))
        self.size += len(sealed)

    def take(self) -> FullPack:
        """Hand over the blobs collected so far and start a new pack (cheap: meant to be
        called under the caller's lock; the copying and hashing happen in ``FullPack.build``)."""
        full = FullPack(self._key, self._envelope, self._parts, self._entries)
        self._parts = []
        self._entries = []
        self.size = 0
        return full

    def finish(self) -> tuple[str, bytes, list[PackEntry]]:
        """Returns (pack name, pack bytes, entries)."""
        return self.take().build()


class FullPack:
    """The sealed blobs of one pack, not yet laid out."""

    __slots__ = ("_entries", "_envelope", "_key", "_parts")

    def __init__(self, key: DataKey, envelope: bytes, parts: list[bytes | bytearray | memoryview],
                 entries: list[tuple[int, bytes, int]]) -> None:
        self._key, self._envelope, self._parts, self._entries = key, envelope, parts, entries

    def build(self) -> tuple[str, bytes, list[PackEntry]]:
        """(pack name, pack bytes, entries): blobs, then the authenticated plain header."""
        body = encode_header_body(self._envelope, self._entries)
        header = body + self._key.seal(b"", body)  # GMAC over the header
        self._parts.append(pack_trailer(header))
        data = b"".join(self._parts)
        self._parts = []
        entries = []
        off = 0
        for t, i, n in self._entries:
            entries.append(PackEntry(BlobType(t), i, off, n))
            off += n
        return hashlib.sha256(data).hexdigest(), data, entries

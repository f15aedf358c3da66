"""Packer: collects sealed blobs of one backup run into pack files."""

from __future__ import annotations

import hashlib

from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType, PackEntry, encode_header_body, pack_trailer


class Packer:
    """Not thread-safe; the write session serialises access.

    Sealed blobs are copied once, into one buffer per pack allocated at ``capacity`` (the pack
    size plus room for the last blob and the header), which becomes the pack file: no list of
    parts joined into a second copy at the end."""

    def __init__(self, key: DataKey, envelope: bytes, capacity: int = 0) -> None:
        self._key = key
        self._envelope = envelope
        self._capacity = capacity
        self._buf: bytearray | None = None
        self._entries: list[tuple[int, bytes, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, btype: BlobType, blob_id: bytes, sealed: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray(self._capacity)
        n = len(sealed)
        end = self.size + n
        if end <= len(buf):
            buf[self.size : end] = sealed  # same length: a copy, never a resize
        else:
            del buf[self.size :]
            buf += sealed
        self._entries.append((int(btype), blob_id, n))
        self.size = end

    def take(self) -> FullPack:
        """Hand over the blobs collected so far and start a new pack (cheap: meant to be
        called under the caller's lock; the header and hash are made in ``FullPack.build``)."""
        full = FullPack(self._key, self._envelope, self._buf or bytearray(), self.size, self._entries)
        self._buf = None
        self._entries = []
        self.size = 0
        return full

    def finish(self) -> tuple[str, bytearray, list[PackEntry]]:
        """Returns (pack name, pack bytes, entries)."""
        return self.take().build()


class FullPack:
    """The sealed blobs of one pack, laid out in its buffer; the header is not written yet."""

    __slots__ = ("_buf", "_entries", "_envelope", "_key", "_size")

    def __init__(self, key: DataKey, envelope: bytes, buf: bytearray, size: int,
                 entries: list[tuple[int, bytes, int]]) -> None:
        self._key, self._envelope, self._buf, self._size, self._entries = key, envelope, buf, size, entries

    def build(self) -> tuple[str, bytearray, list[PackEntry]]:
        """(pack name, pack bytes, entries): blobs, then the authenticated plain header."""
        body = encode_header_body(self._envelope, self._entries)
        header = body + self._key.seal(b"", body)  # GMAC over the header
        data = self._buf
        del data[self._size :]
        data += pack_trailer(header)
        self._buf = bytearray()
        entries = []
        off = 0
        for t, i, n in self._entries:
            entries.append(PackEntry(BlobType(t), i, off, n))
            off += n
        return hashlib.sha256(data).hexdigest(), data, entries

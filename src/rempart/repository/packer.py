"""Packer: collects sealed blobs of one backup run into pack files."""

from __future__ import annotations

import hashlib
import mmap

from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType, PackEntry, encode_header_body, pack_trailer


class Packer:
    """Not thread-safe; the write session serialises access.

    Sealed blobs are copied once, into a pack-sized buffer of anonymous memory (the pack size
    plus room for the last blob and the header) that becomes the pack file: no list of parts
    joined into a second copy. Buffers come back through ``recycle`` once their pack is stored, so a run touches the
    same few buffers again instead of faulting in fresh zeroed pages for every pack."""

    def __init__(self, key: DataKey, envelope: bytes, capacity: int = 0, keep: int = 3) -> None:
        self._key = key
        self._envelope = envelope
        self._capacity = capacity
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._buf: bytearray | mmap.mmap | None = None
        self._entries: list[tuple[int, bytes, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, btype: BlobType, blob_id: bytes, sealed: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        if buf is None:
            buf = self._buf = self._free.pop() if self._free else _new_buffer(self._capacity)
        self._buf, self.size = _put(buf, self.size, sealed)
        self._entries.append((int(btype), blob_id, len(sealed)))

    def take(self) -> FullPack:
        """Hand over the blobs collected so far and start a new pack (cheap: meant to be
        called under the caller's lock; the header and hash are made in ``FullPack.build``)."""
        full = FullPack(self._key, self._envelope, self._buf or bytearray(), self.size, self._entries)
        self._buf = None
        self._entries = []
        self.size = 0
        return full

    def recycle(self, buf: bytearray | mmap.mmap) -> None:
        """Take back the buffer of a stored pack (the caller holds no view of it any more)."""
        if isinstance(buf, mmap.mmap) and len(buf) == self._capacity and len(self._free) < self._keep:
            self._free.append(buf)

    def finish(self) -> tuple[str, memoryview, list[PackEntry]]:
        """Returns (pack name, pack bytes, entries)."""
        return self.take().build()


def _new_buffer(size: int) -> mmap.mmap | bytearray:
    """Anonymous memory: a page takes RAM only once written (``bytearray(n)`` writes zeros to
    all of it), so a pack buffer that only ever holds a few tree blobs stays small."""
    return mmap.mmap(-1, size) if size else bytearray()


def _put(buf: bytearray | mmap.mmap, at: int, data: bytes | bytearray | memoryview) -> tuple[bytearray | mmap.mmap, int]:
    """Copy ``data`` into ``buf`` at ``at``; returns the buffer and the end. A buffer is never
    resized (a view of it may still be held by whoever stored the previous pack): what does
    not fit (a huge tree blob) goes into a new, larger buffer, which is then not recycled."""
    end = at + len(data)
    if end <= len(buf):
        buf[at:end] = data  # same length: a copy, never a resize
        return buf, end
    grown = bytearray(memoryview(buf)[:at])
    grown += data
    return grown, end


class FullPack:
    """The sealed blobs of one pack, laid out in its buffer; the header is not written yet.
    The buffer may be shared memory (a reading process's pack): it then must have room for
    the header (``format.pack_tail_size``), or the pack would land in a private copy."""

    __slots__ = ("_entries", "_envelope", "_key", "_size", "buffer")

    def __init__(self, key: DataKey, envelope: bytes, buf: bytearray | mmap.mmap, size: int,
                 entries: list[tuple[int, bytes, int]]) -> None:
        self._key, self._envelope, self.buffer, self._size, self._entries = key, envelope, buf, size, entries

    def build(self) -> tuple[str, memoryview, list[PackEntry]]:
        """(pack name, pack bytes: a view of ``buffer``, entries): blobs, then the
        authenticated plain header."""
        body = encode_header_body(self._envelope, self._entries)
        header = body + self._key.seal(b"", body)  # GMAC over the header
        self.buffer, end = _put(self.buffer, self._size, pack_trailer(header))
        data = memoryview(self.buffer)[:end]
        entries = []
        off = 0
        for t, i, n in self._entries:
            entries.append(PackEntry(BlobType(t), i, off, n))
            off += n
        return hashlib.sha256(data).hexdigest(), data, entries

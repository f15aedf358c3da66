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
        self._parts: list[bytes | bytearray] = []
        self._entries: list[tuple[int, bytes, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, btype: BlobType, blob_id: bytes, sealed: bytes | bytearray) -> None:
        self._parts.append(sealed)
        self._entries.append((int(btype), blob_id, len(sealed)))
        self.size += len(sealed)

    def finish(self) -> tuple[str, bytes, list[PackEntry]]:
        """Returns (pack name, pack bytes, entries)."""
        body = encode_header_body(self._envelope, self._entries)
        header = body + self._key.seal(b"", body)  # GMAC over the header
        self._parts.append(pack_trailer(header))
        data = b"".join(self._parts)
        entries = []
        off = 0
        for t, i, n in self._entries:
            entries.append(PackEntry(BlobType(t), i, off, n))
            off += n
        self._parts = []
        self._entries = []
        self.size = 0
        return hashlib.sha256(data).hexdigest(), data, entries

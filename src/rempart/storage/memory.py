"""In-memory backend for tests and simulations; honours the same contract as the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from rempart.core.errors import AlreadyExists, IntegrityError, NotFound
from rempart.storage.base import BackendProperties, FileInfo, FileType, Handle


class MemoryBackend:
    def __init__(self) -> None:
        self.properties = BackendProperties(connections=4, location="memory")
        self._files: dict[tuple[FileType, str], bytes] = {}
        self._lock = threading.Lock()

    def save(self, h: Handle, data: bytes) -> None:
        with self._lock:
            key = (h.type, h.name)
            if key in self._files:
                raise AlreadyExists(f"save {h}: already exists")
            self._files[key] = bytes(data)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data = self._files[(h.type, h.name)]
            except KeyError:
                raise NotFound(f"load {h}: not found") from None
        out = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(out) != length:
            raise IntegrityError(f"load {h}: short read ({len(out)} of {length} bytes)")
        return out

    def stat(self, h: Handle) -> FileInfo:
        with self._lock:
            try:
                return FileInfo(h.name, len(self._files[(h.type, h.name)]))
            except KeyError:
                raise NotFound(f"stat {h}: not found") from None

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        with self._lock:
            items = sorted((n, len(d)) for (t, n), d in self._files.items() if t is ftype)
        for n, size in items:
            yield FileInfo(n, size)

    def remove(self, h: Handle) -> None:
        with self._lock:
            if self._files.pop((h.type, h.name), None) is None:
                raise NotFound(f"remove {h}: not found")

    def close(self) -> None:
        pass

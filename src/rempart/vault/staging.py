"""Pack uploads written to a temporary file as they arrive (local storage).

A 16 MiB pack used to be collected in memory and written afterwards: a copy of every byte into a
growing buffer (fresh pages, faulted in and zeroed), then a second copy of that cache-cold
buffer into the page cache, after the whole body had arrived. Here each chunk of the body is
hashed and written to a temporary file while it is still in the CPU cache, so the write overlaps
the receiving, and what is left at the end is the fsync.

Guarantees (the same as the in-memory path's): the temporary file lives in the practice's
``tmp/`` folder, which no listing, read or index shows; it becomes the object only in
:meth:`StagedUpload.publish`, called after the SHA-256 of the bytes has been checked against
the name, the pack header parsed and the quota checked: fsync of the file, then ``link`` to the
final name (fails if the name exists: create-only, nothing is ever replaced), fsync of the
folder. An upload cut off, refused or failed is removed by :meth:`StagedUpload.discard`
(a crash leaves at most an invisible ``*.tmp`` file, as ``LocalBackend.save`` does).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from rempart.repository.format import PackEntry, read_pack_header
from rempart.storage.base import Handle
from rempart.storage.local import LocalBackend, fsync_dir, map_os_errors

#: start writing a staged file back to disk every this many bytes (see _writeback)
WRITEBACK_BYTES = 4 << 20


def _load_writeback() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` from the C library (Linux):
    asks the kernel to start writing those pages now, without waiting for them. The final
    fsync then finds most of a 16 MiB pack on disk already, instead of writing all of it while
    the client waits for the answer. None where the call does not exist (a hint only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start(fd: int, offset: int, n: int) -> None:
        fn(fd, offset, n, 2)  # SYNC_FILE_RANGE_WRITE; an error only means no early start

    return start


_writeback = _load_writeback()


class StagedUpload:
    """One upload being written to ``<practice>/tmp/<name>.<random>.tmp``. Not thread-safe:
    the receiving coroutine writes, then one worker thread checks and publishes."""

    def __init__(self, backend: LocalBackend, h: Handle) -> None:
        self.handle = h
        self.final = backend.file_path(h)
        self.path: Path | None = backend.root / "tmp" / f"{h.name}.{secrets.token_hex(8)}.tmp"
        self.size = 0
        self._started = 0  # bytes whose write-back was started
        self._sha = hashlib.sha256()
        with map_os_errors(f"save {h}"):
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk of the body (hashed as it goes)."""
        assert self._fd is not None, "write after discard"
        self._sha.update(chunk)
        view = memoryview(chunk)
        with map_os_errors(f"save {self.handle}"):
            while view:
                view = view[os.write(self._fd, view):]
        self.size += len(chunk)
        if _writeback is not None and self.size - self._started >= WRITEBACK_BYTES:
            _writeback(self._fd, self._started, self.size - self._started)
            self._started = self.size

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def pack_entries(self) -> list[PackEntry]:
        """Parse the pack header from the file's tail (what the in-memory path parsed from the
        whole buffer); IntegrityError if it is not a pack."""
        assert self.path is not None
        with map_os_errors(f"read {self.handle}"), open(self.path, "rb") as f:
            fd = f.fileno()
            return list(read_pack_header(lambda offset, length: os.pread(fd, length, offset), self.size).entries)

    def publish(self) -> bool:
        """Make the checked bytes the object: fsync, link (create-only), fsync the folder.
        False if the name existed already (same name = same bytes: stored before a crash and
        not yet recorded, or by a concurrent identical upload)."""
        assert self._fd is not None and self.path is not None, "publish after discard"
        with map_os_errors(f"save {self.handle}"):
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self.final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.path, self.final)  # atomic and never replaces an existing file
            except FileExistsError:
                return False
            finally:
                os.unlink(self.path)
                self.path = None
            fsync_dir(self.final.parent)
        return True

    def discard(self) -> None:
        """Remove the temporary file (idempotent; nothing after :meth:`publish`)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def stage(backend: object, h: Handle) -> StagedUpload | None:
    """A staged upload for ``h`` if the practice's storage is a local folder, else None (S3:
    the body is collected in memory and saved through the backend)."""
    if isinstance(backend, LocalBackend):
        return StagedUpload(backend, h)
    return None


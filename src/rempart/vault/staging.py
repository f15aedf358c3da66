"""Pack uploads written to a temporary file as they arrive (local storage).

A 16 MiB pack used to be collected in memory and written afterwards: a copy of every byte into a
growing buffer (fresh pages, faulted in and zeroed), then a second copy of that cache-cold
buffer into the page cache, after the whole body had arrived. Here each chunk of the body is
copied into one of two page-aligned buffers of ``BUFFER`` bytes; a full buffer is hashed and
written to a temporary file by a thread while the event loop receives into the other, so the
write overlaps the receiving, and what is left at the end is the last buffer and the fsync.
The writes use ``O_DIRECT`` where the file system takes it (``rempart.storage.direct``): a
buffered write cost ~1.1 ms of CPU per MiB here, copying into the page cache, on the loop that
also decrypts TLS for every other upload (docs/benchmarks.md, "Vault throughput (session 9)").

Guarantees (the same as the in-memory path's): the temporary file lives in the practice's
``tmp/`` folder, which no listing, read or index shows; it becomes the object only in
:meth:`StagedUpload.publish`, called after the SHA-256 of the bytes has been checked against
the name, the pack header parsed and the quota checked: fsync of the file, then ``link`` to the
final name (fails if the name exists: create-only, nothing is ever replaced), fsync of the
folder. An upload cut off, refused or failed is removed by :meth:`StagedUpload.discard`
(a crash leaves at most an invisible ``*.tmp`` file, as ``LocalBackend.save`` does).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import mmap
import os
import secrets
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rempart.core.errors import IntegrityError
from rempart.repository.format import PackEntry, parse_pack_header
from rempart.storage.base import Handle
from rempart.storage.direct import open_new, write_at
from rempart.storage.local import LocalBackend, fsync_dir, map_os_errors

#: start writing a staged file back to disk every this many bytes (see _writeback; only when
#: the file system refused ``O_DIRECT``)
WRITEBACK_BYTES = 4 << 20
#: the body is gathered in two buffers of this size (a multiple of every block size), each
#: hashed and written by a thread once full; 1 MiB: ~10 hand-overs per 10 MiB pack
BUFFER = 1 << 20

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _writers() -> ThreadPoolExecutor:
    """The threads that hash and write full buffers (one job per upload at a time, so a pool
    shared by every upload keeps each file's bytes in order)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rempart-staging")
        return _pool


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
    the receiving coroutine calls :meth:`write` and :meth:`finish`, then one worker thread
    checks and publishes."""

    def __init__(self, backend: LocalBackend, h: Handle) -> None:
        self.handle = h
        self.final = backend.file_path(h)
        self.path: Path | None = backend.root / "tmp" / f"{h.name}.{secrets.token_hex(8)}.tmp"
        self.size = 0  # bytes received
        self._sha = hashlib.sha256()
        self._bufs: list[mmap.mmap] = []  # the one being filled first; made at the first write
        self._fill = 0  # bytes in the buffer being filled
        self._offset = 0  # where that buffer goes in the file
        self._job: Future[None] | None = None  # the other buffer, being hashed and written
        self._started = 0  # bytes whose write-back was started (without O_DIRECT)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with map_os_errors(f"save {h}"):
            fd, self._direct = open_new(self.path)
            self._fd: int | None = fd

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk of the body; waits only when both buffers are full."""
        assert self._fd is not None, "write after discard"
        view = memoryview(chunk).cast("B")
        self.size += len(view)
        if not self._bufs:
            self._bufs = [mmap.mmap(-1, BUFFER), mmap.mmap(-1, BUFFER)]
        while view:
            take = min(BUFFER - self._fill, len(view))
            self._bufs[0][self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == BUFFER:
                await self._hand_over()

    async def finish(self) -> str:
        """Write what is left (not synced yet: :meth:`publish` does); the body's SHA-256."""
        if self._fill:
            await self._hand_over()
        await self._wait()
        self._free()
        return self._sha.hexdigest()

    async def _wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            await asyncio.wrap_future(job)  # its error (a full disk, ...) is raised here

    async def _hand_over(self) -> None:
        """Give the buffer being filled to a thread, once the other one is written."""
        await self._wait()
        buf, n, offset = self._bufs[0], self._fill, self._offset
        self._job = _writers().submit(self._store, buf, n, offset)
        self._bufs.reverse()
        self._fill, self._offset = 0, offset + n

    def _store(self, buf: mmap.mmap, n: int, offset: int) -> None:
        """In a writing thread: hash ``buf[:n]`` and write it at ``offset``."""
        fd = self._fd
        assert fd is not None
        with memoryview(buf) as whole, whole[:n] as view:
            self._sha.update(view)
            with map_os_errors(f"save {self.handle}"):
                self._direct = write_at(fd, view, offset, self._direct)
        end = offset + n
        if not self._direct and _writeback is not None and end - self._started >= WRITEBACK_BYTES:
            _writeback(fd, self._started, end - self._started)
            self._started = end

    def _free(self) -> None:
        for buf in self._bufs:
            try:
                buf.close()
            except BufferError:  # a failed write's traceback still has a view: freed with it
                pass
        self._bufs = []

    def pack_entries(self) -> list[PackEntry]:
        """Parse the pack header from the file's tail (what the in-memory path parsed from the
        whole buffer); IntegrityError if it is not a pack."""
        assert self.path is not None
        size = self.size
        with map_os_errors(f"read {self.handle}"), open(self.path, "rb") as f:
            if size < 8:
                raise IntegrityError("not a pack file (too short)")
            f.seek(size - 8)
            (hlen,) = struct.unpack("<I", f.read(4))
            n = min(size, hlen + 8)
            f.seek(size - n)
            tail = f.read(n)
        return list(parse_pack_header(tail, size).entries)

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
        """Remove the temporary file (idempotent; nothing after :meth:`publish`). A buffer
        still being written is waited for first (at most ``BUFFER`` bytes)."""
        job, self._job = self._job, None
        if job is not None:
            try:
                job.result()
            except Exception:  # noqa: S110 - the upload failed already; its error was reported
                pass
        self._free()
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


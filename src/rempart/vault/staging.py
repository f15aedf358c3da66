"""Pack uploads written to a temporary file as they arrive (local storage), past the page cache.

A 16 MiB pack used to be collected in memory and written afterwards: a copy of every byte into a
growing buffer, then a second copy of that cache-cold buffer into the page cache, after the
whole body had arrived. Then each chunk of the body was hashed and written (buffered) to a
temporary file as it arrived. That still copied every byte into the page cache, on the event
loop's thread: the copy, the page allocation and the file system's block bookkeeping were a
quarter to a half of the vault's CPU during a backup (docs/benchmarks.md, "Vault throughput
(session 17)"), and they filled the vault host's memory with packs that are rarely read again
(a vault keeps thousands of practices' backups; restores are rare).

Here each chunk is hashed and copied into one of two 1 MiB page-aligned buffers; a full buffer
is written with ``O_DIRECT`` (the device reads it from the buffer itself: no page cache, almost
no CPU) by a writer thread while the other buffer fills. The event loop never waits for the
disk: when the disk is slower than the network, the receiving coroutine awaits the write in
flight (:meth:`StagedUpload.behind`) and the other requests go on. The tail (under 1 MiB) is
written when the upload is complete: its whole 4 KiB blocks directly, the last partial block
through the page cache once ``O_DIRECT`` is cleared (as :mod:`rempart.storage.direct` does for the agent's
local packs). A file system without ``O_DIRECT`` (tmpfs) gets the same writes, buffered.
Buffers are reused across uploads (a small pool), so their pages are touched once.

Guarantees (unchanged): the temporary file lives in the practice's ``tmp/`` folder, which no
listing, read or index shows; it becomes the object only in :meth:`StagedUpload.publish`,
called after the SHA-256 of the bytes has been checked against the name, the pack header parsed
and the quota checked: fsync of the file, then ``link`` to the final name (fails if the name
exists: create-only, nothing is ever replaced), fsync of the folder. An upload cut off, refused
or failed is removed by :meth:`StagedUpload.discard` (a crash leaves at most an invisible
``*.tmp`` file, as ``LocalBackend.save`` does). A write error (a full disk) surfaces at the next
chunk, or at the latest when the upload completes, as the usual ``StorageFull``/``BackendError``.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import secrets
import threading
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

from rempart.repository.format import PackEntry, read_pack_header
from rempart.storage.base import Handle
from rempart.storage.direct import BLOCK, O_DIRECT, clear_direct
from rempart.storage.local import LocalBackend, fsync_dir, map_os_errors

#: bytes of an upload held in memory per buffer (two per upload in flight)
STAGE = 1 << 20
#: free buffers kept for the next uploads
POOL_KEEP = 16
#: threads that write full buffers (shared by all uploads)
WRITERS = 4


class _Buffers:
    """Page-aligned buffers of STAGE bytes (anonymous mappings), reused across uploads."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, STAGE)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < POOL_KEEP:
                self._free.append(buf)
                return
        try:
            buf.close()
        except BufferError:  # a view of it still lives (e.g. in an error's traceback): unmapped with it
            pass


_BUFFERS = _Buffers()
_WRITER: list[ThreadPoolExecutor] = []
_WRITER_LOCK = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    with _WRITER_LOCK:
        if not _WRITER:
            _WRITER.append(ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="vault-write"))
        return _WRITER[0]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset``. A device that refuses a direct write (EINVAL: an
    unusual block size) gets it again through the page cache, and so does the rest of the file."""
    try:
        while len(view):
            try:
                n = os.pwrite(fd, view, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not clear_direct(fd):
                    raise
                continue
            if n <= 0:
                raise OSError(errno.EIO, "the device wrote nothing")
            view, offset = view[n:], offset + n
    finally:
        view.release()


class StagedUpload:
    """One upload being written to ``<practice>/tmp/<name>.<random>.tmp``. Not thread-safe:
    the receiving coroutine writes, then one worker thread checks and publishes (or the
    coroutine discards)."""

    def __init__(self, backend: LocalBackend, h: Handle) -> None:
        self.handle = h
        self.final = backend.file_path(h)
        self.path: Path | None = backend.root / "tmp" / f"{h.name}.{secrets.token_hex(8)}.tmp"
        self.size = 0
        self._sha = hashlib.sha256()
        self._written = 0  # bytes handed to the writer (the file offset of the buffer filling now)
        self._fill = 0  # bytes in the buffer filling now
        self._pending: Future[None] | None = None  # the write of the other buffer
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._direct = bool(O_DIRECT)
        with map_os_errors(f"save {h}"):
            try:
                self._fd: int | None = os.open(self.path, flags | O_DIRECT if self._direct else flags, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file system does not do O_DIRECT
                    raise
                self._direct = False
                self._fd = os.open(self.path, flags, 0o666)
        self._bufs = [_BUFFERS.take(), _BUFFERS.take()]

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk of the body (hashed as it goes)."""
        assert self._fd is not None, "write after discard"
        self._sha.update(chunk)
        view = memoryview(chunk)
        with map_os_errors(f"save {self.handle}"):
            while len(view):
                n = min(len(view), STAGE - self._fill)
                self._bufs[0][self._fill : self._fill + n] = view[:n]
                self._fill += n
                view = view[n:]
                if self._fill == STAGE:
                    self._hand_over()
        self.size += len(chunk)

    def behind(self, n: int) -> Future[None] | None:
        """The write still in flight that :meth:`write` of ``n`` more bytes would wait for (the
        buffer it needs next), or None: the receiving coroutine awaits it instead of blocking
        the event loop. (A piece larger than a buffer may still wait inside ``write``.)"""
        pending = self._pending
        if pending is not None and not pending.done() and self._fill + n >= STAGE:
            return pending
        return None

    def _hand_over(self) -> None:
        """Write the full buffer in the writer thread (after the previous write: one at a time
        per upload, in order) and fill the other one meanwhile."""
        assert self._fd is not None
        self._wait()
        self._pending = _writer().submit(_pwrite_all, self._fd, memoryview(self._bufs[0]), self._written)
        self._written += STAGE
        self._fill = 0
        self._bufs.reverse()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # the write's OSError, if any

    def _finish(self) -> None:
        """Write what is still in memory (the tail); idempotent."""
        self._wait()
        if not self._fill:
            return
        assert self._fd is not None
        view = memoryview(self._bufs[0])[: self._fill]
        direct = self._fill // BLOCK * BLOCK if self._direct else 0
        try:
            if direct:
                _pwrite_all(self._fd, view[:direct], self._written)
            if self._direct:
                clear_direct(self._fd)
                self._direct = False
            _pwrite_all(self._fd, view[direct:], self._written + direct)
        finally:
            view.release()
        self._written += self._fill
        self._fill = 0

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def pack_entries(self) -> list[PackEntry]:
        """Parse the pack header from the file's tail (what the in-memory path parsed from the
        whole buffer); IntegrityError if it is not a pack."""
        assert self.path is not None
        with map_os_errors(f"save {self.handle}"):
            self._finish()
        with map_os_errors(f"read {self.handle}"), open(self.path, "rb") as f:
            fd = f.fileno()
            return list(read_pack_header(lambda offset, length: os.pread(fd, length, offset), self.size).entries)

    def publish(self) -> bool:
        """Make the checked bytes the object: fsync, link (create-only), fsync the folder.
        False if the name existed already (same name = same bytes: stored before a crash and
        not yet recorded, or by a concurrent identical upload)."""
        assert self._fd is not None and self.path is not None, "publish after discard"
        with map_os_errors(f"save {self.handle}"):
            self._finish()
            self._release()
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

    def _release(self) -> None:
        """Give the buffers back (once no write of them is pending)."""
        for buf in self._bufs:
            _BUFFERS.give(buf)
        self._bufs = []

    def discard(self) -> None:
        """Remove the temporary file (idempotent; nothing after :meth:`publish`). Waits for a
        write in flight first: its file descriptor must not be closed (and reused) under it."""
        try:
            self._wait()
        except (OSError, CancelledError):
            pass  # the upload failed or was abandoned anyway; its file goes
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None
        if self._bufs:
            self._release()


def stage(backend: object, h: Handle) -> StagedUpload | None:
    """A staged upload for ``h`` if the practice's storage is a local folder, else None (S3:
    the body is collected in memory and saved through the backend)."""
    if isinstance(backend, LocalBackend):
        return StagedUpload(backend, h)
    return None


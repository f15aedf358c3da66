"""Writing a large file without copying it into the page cache (``O_DIRECT``).

A buffered ``write`` of a 10 MiB pack costs ~12 ms of kernel CPU on the test machine (the copy
into the page cache and its block allocation), every pack of a backup, on the cores that chunk
and compress; the device then copies the same pages again on writeback. With ``O_DIRECT`` the
device reads the pages of the caller's buffer itself: ~1.3 ms of CPU per pack, the same time to
durable (docs/benchmarks.md, "Summary (session 7)", "Packs written with `O_DIRECT`").

``O_DIRECT`` needs the buffer's address, the length and the file offset aligned to the
device's logical block: the whole 4 KiB blocks at the start of a page-aligned buffer (a pack
built in the archiver's shared memory) are written directly, the rest (under 4 KiB) through
the page cache, on the same file descriptor once ``O_DIRECT`` is cleared. Anything else (an
unaligned buffer, a small file, a file system without ``O_DIRECT`` such as tmpfs, a platform
without it) is written the ordinary way. The caller fsyncs the file either way: ``O_DIRECT``
does not flush the device's cache nor the file's metadata.
"""

from __future__ import annotations

import ctypes
import errno
import os

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no O_DIRECT either
    fcntl = None  # type: ignore[assignment]

O_DIRECT = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0
BLOCK = 4096  # a multiple of every logical block size Linux supports for O_DIRECT
MIN_DIRECT = 1 << 20  # smaller files: the page cache costs little, and they are read back soon


def _aligned_blocks(data: bytes | bytearray | memoryview) -> int:
    """How many leading bytes of ``data`` can be written with ``O_DIRECT``: 0 unless the buffer
    is writable (ctypes can only take the address of those) and starts on a page."""
    if not O_DIRECT or len(data) < MIN_DIRECT:
        return 0
    view = memoryview(data)
    if view.readonly or not view.c_contiguous or view.itemsize != 1:
        return 0
    anchor = ctypes.c_char.from_buffer(view)  # exports the buffer until deleted
    try:
        address = ctypes.addressof(anchor)
    finally:
        del anchor
    view.release()
    if address % BLOCK:
        return 0
    return len(data) // BLOCK * BLOCK


def write_new_file(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, mode: int = 0o666) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it; ``O_DIRECT`` for the
    aligned part of a large, page-aligned buffer (see the module docstring)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    direct = _aligned_blocks(data)
    fd = -1
    if direct:
        try:
            fd = os.open(path, flags | O_DIRECT, mode)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system does not do O_DIRECT
                raise
            direct = 0
    if fd < 0:
        fd = os.open(path, flags, mode)
    try:
        view = memoryview(data).cast("B")
        done = 0
        if direct:
            try:
                done = _write_all(fd, view[:direct], 0)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                done = 0  # refused after all (an unusual device): start again through the cache
            clear_direct(fd)
        _write_all(fd, view[done:], done)
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_direct(fd: int) -> bool:
    """Turn ``O_DIRECT`` off on ``fd`` (what follows goes through the page cache); False if it
    was not on."""
    if not O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & O_DIRECT:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)
    return True


def _write_all(fd: int, view: memoryview, offset: int) -> int:
    """Write all of ``view`` at ``offset``; returns the offset after it."""
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "the device wrote nothing")
        view = view[n:]
        offset += n
    return offset

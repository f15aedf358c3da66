"""Ranged reads of objects in local storage as views of the mapped file (the restore's hot path).

``LocalBackend.load`` reads a range into a fresh ``bytes``: for a run of a few MiB, malloc maps
fresh memory, the kernel zeroes its pages and copies the page cache into them, and it is all
unmapped again once sent: per restored MiB a copy plus page clearing and faults, about a sixth
of the vault's CPU while serving a restore. Here the file is mapped read-only and the answer is a
memoryview of the range: TLS encrypts straight from the page cache.

Objects are immutable (create-only; GC only unlinks, and an unlinked file stays readable while
mapped), so the view cannot change under the response. The range is faulted in before the view
is handed out (``MADV_POPULATE_READ``, Linux 5.14+): a disk error, or a file shorter than it was
when measured (only an outside hand truncates an object), is then an error for this request.
Touching a mapped page that cannot be read would raise SIGBUS instead, and end the vault for
every practice. Populated pages could still be reclaimed under memory pressure and fail on the
way back in during the send: the window is narrowed to that, not closed. Where the kernel cannot
populate, ranges are read into memory instead (a copy, no such window). The mapping lives as long
as a view of it (until the response is sent), then the garbage collector unmaps it. Small ranges
are read as before (a mapping costs a few system calls).
"""

from __future__ import annotations

import errno
import mmap
import os
import sys

from rempart.core.errors import IntegrityError
from rempart.storage.base import Backend, Handle
from rempart.storage.local import LocalBackend, map_os_errors

#: ranges at least this long are served from a mapping
MAP_MIN = 256 * 1024
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: madvise(2) advice that faults a range in now and fails (EFAULT, EIO...) where touching it would
#: raise SIGBUS; Python 3.11's mmap module does not name it (its value is fixed in the kernel's ABI)
MADV_POPULATE_READ: int = getattr(mmap, "MADV_POPULATE_READ", 22)
#: False once the kernel said it cannot populate (older than 5.14): ranges are then read; other
#: systems read from the start
_POPULATE = [sys.platform.startswith("linux") and hasattr(mmap.mmap, "madvise")]


def read_range(backend: Backend, h: Handle, start: int, length: int | None) -> bytes | memoryview:
    """Bytes ``start .. start + length`` (to the end if None) of ``h``, as ``backend.load`` gives
    them: a view of the mapped file when the storage is a local folder and the range is large."""
    if (type(backend) is not LocalBackend or length is None or length < MAP_MIN or not hasattr(mmap, "MAP_SHARED")
            or not _POPULATE[0]):
        return backend.load(h, offset=start, length=length)
    with map_os_errors(f"load {h}"):
        fd = os.open(backend.file_path(h), os.O_RDONLY | _CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if start + length > size:
                raise IntegrityError(f"load {h}: short read ({max(0, size - start)} of {length} bytes)")
            mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if len(mm) < start + length:  # it shrank between fstat and mmap
            mm.close()
            raise IntegrityError(f"load {h}: short read (the file shrank while being read)")
        page = start - start % mmap.PAGESIZE
        try:
            mm.madvise(MADV_POPULATE_READ, page, start + length - page)
        except OSError as exc:
            mm.close()
            if exc.errno == errno.EINVAL:  # a kernel without MADV_POPULATE_READ: read from now on
                _POPULATE[0] = False
                return backend.load(h, offset=start, length=length)
            if exc.errno == errno.EFAULT:  # past the end of the file: it shrank since fstat
                raise IntegrityError(f"load {h}: short read (the file shrank while being read)") from None
            raise
    return memoryview(mm)[start : start + length]

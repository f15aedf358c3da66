"""Ranged reads of objects in local storage as views of the mapped file (the restore's hot path).

``LocalBackend.load`` reads a range into a fresh ``bytes``: for a run of a few MiB, malloc maps
fresh memory, the kernel zeroes its pages and copies the page cache into them, and it is all
unmapped again once sent: per restored MiB a copy plus page clearing and faults, about a sixth
of the vault's CPU while serving a restore. Here the file is mapped read-only and the answer is a
memoryview of the range: TLS encrypts straight from the page cache.

Objects are immutable (create-only; GC only unlinks, and an unlinked file stays readable while
mapped), so the view cannot change under the response. A file truncated behind the vault's
back (only an outside hand could) would end the process with SIGBUS while the range is sent,
where a read would have raised an error. The mapping lives as long as a view of
it (until the response is sent), then the garbage collector unmaps it. Small ranges are read as
before (a mapping costs a few system calls).
"""

from __future__ import annotations

import mmap
import os

from rempart.core.errors import IntegrityError
from rempart.storage.base import Backend, Handle
from rempart.storage.local import LocalBackend, map_os_errors

#: ranges at least this long are served from a mapping
MAP_MIN = 256 * 1024
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def read_range(backend: Backend, h: Handle, start: int, length: int | None) -> bytes | memoryview:
    """Bytes ``start .. start + length`` (to the end if None) of ``h``, as ``backend.load`` gives
    them: a view of the mapped file when the storage is a local folder and the range is large."""
    if type(backend) is not LocalBackend or length is None or length < MAP_MIN or not hasattr(mmap, "MAP_SHARED"):
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
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        page = start - start % mmap.PAGESIZE
        mm.madvise(mmap.MADV_WILLNEED, page, start + length - page)  # map the range in few faults
    return memoryview(mm)[start : start + length]

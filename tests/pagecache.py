"""Test helper: how much of a file the kernel holds in its page cache (Linux)."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore(2) on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    size = path.stat().st_size
    pages = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    # a private mapping is writable (ctypes needs that for an address) and never writes the file
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                                          prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
        view = (ctypes.c_char * size).from_buffer(m)
        try:
            if libc.mincore(ctypes.addressof(view), size, pages) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del view
    return sum(b & 1 for b in pages)

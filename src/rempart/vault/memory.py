"""The C allocator's settings for the vault server process (glibc ``mallopt``).

Every piece of an upload passes through buffers of a few hundred KiB (the TLS layer's joined
records, the HTTP parser's body pieces), allocated and freed again right away. glibc serves
blocks of 128 KiB or more with a fresh ``mmap`` and returns them with ``munmap`` (its dynamic
threshold only rises later, and then the top of the heap is trimmed back to the system with
``brk`` on almost every free): so each MiB of a pack came in through new pages, each one a page
fault and a page the kernel had to zero first. On the benchmark machine, 20 uploads of 10 MB:
~33,000 minor page faults per round and 0.26-0.33 s of system time, against ~20 faults and
0.16-0.23 s with the settings below (vault CPU per round ~1.05 -> ~0.95 s).

Here blocks up to :data:`MMAP_THRESHOLD` come from the heap and up to :data:`TRIM_THRESHOLD` of
free memory at its top is kept for the next request instead of being given back: the same
warm pages serve one upload after the other. The cost is that the vault's resident memory does
not shrink below its busiest moment (bounded by the requests in flight, as before).
"""

from __future__ import annotations

import ctypes

#: allocations below this size come from the heap (glibc's maximum for the setting: 32 MiB)
MMAP_THRESHOLD = 32 << 20
#: free memory kept at the top of the heap before it is returned to the system
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Apply the settings to this process; False where the C library has no ``mallopt`` or
    refuses them (not glibc: nothing changes, nothing breaks)."""
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - no C library symbol
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(fn(_M_TRIM_THRESHOLD, trim_threshold))

"""Structural checks for databases and programs: SQLite (and its WAL), PE executables.

Every sampled SQLite page is checked: its type byte, the b-tree header and the cell pointer
array must be consistent with the page size, which ciphertext never is.
"""

from __future__ import annotations

import struct

from rempart.detect.sampling import Check, SampleView

SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGICS = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
PE_MAGIC = b"MZ"
DB_EXTENSIONS = frozenset(
    {
        ".db", ".sqlite", ".sqlite3", ".db3", ".mdb", ".accdb", ".fdb", ".gdb", ".mdf", ".ndf",
        ".ldf", ".dbf", ".fic", ".ndx", ".mmo", ".dat", ".4dd", ".4dr", ".myd", ".ibd", ".frm",
    }
)
_PAGE_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 13})
_PE_MACHINES = frozenset({0x14C, 0x8664, 0xAA64, 0x1C4, 0x200, 0x0})


def _page_size(raw: int) -> int:
    return 65536 if raw == 1 else raw


def check_sqlite(view: SampleView) -> Check:
    head = view.head
    if len(head) < 112:
        return Check("sqlite", False, "short-header", db=True)
    page_size = _page_size(struct.unpack_from(">H", head, 16)[0])
    if page_size < 512 or page_size & (page_size - 1):
        return Check("sqlite", False, "bad-page-size", db=True)
    if head[18] not in (1, 2) or head[19] not in (1, 2) or head[21:24] != b"\x40\x20\x20":
        return Check("sqlite", False, "bad-header", db=True)
    change, pages = struct.unpack_from(">II", head, 24)
    (valid_for,) = struct.unpack_from(">I", head, 92)
    (encoding,) = struct.unpack_from(">I", head, 56)
    if encoding > 3:
        return Check("sqlite", False, "bad-header", db=True)
    if view.size % page_size:
        return Check("sqlite", False, "size-not-page-multiple", db=True)
    if valid_for == change and pages and pages * page_size > view.size:
        return Check("sqlite", False, "truncated", db=True)
    total_pages = view.size // page_size
    if head[100] not in (5, 13):
        return Check("sqlite", False, "bad-page", db=True)
    bad = 0
    for off, data in view.ranges:
        first = -(-off // page_size) * page_size
        for page_off in range(max(first, page_size), off + len(data), page_size):
            if page_off + 12 > off + len(data):
                break
            page = data[page_off - off : page_off - off + page_size]
            if not _page_ok(page, page_size, total_pages):
                bad += 1
    if bad:
        return Check("sqlite", False, "bad-page", db=True)
    return Check("sqlite", True, db=True)


def _page_ok(page: bytes, page_size: int, total_pages: int) -> bool:
    kind = page[0]
    if kind not in _PAGE_TYPES:
        return False
    if kind in (0, 1, 3, 4):
        # overflow, freelist trunk or pointer-map page: starts with a page number (or entry type)
        (nxt,) = struct.unpack_from(">I", page, 0 if kind == 0 else 1)
        return kind != 0 or nxt <= total_pages
    freeblock, cells, content, frag = struct.unpack_from(">HHHB", page, 1)
    content = content or 65536
    header = 12 if kind in (2, 5) else 8
    if content > page_size or frag > 60 or (freeblock and not header <= freeblock < page_size):
        return False
    if cells and header + 2 * cells > content:
        return False
    if kind in (2, 5):
        (right,) = struct.unpack_from(">I", page, 8)
        if not 0 < right <= total_pages:
            return False
    pointers_end = header + 2 * cells
    if pointers_end <= len(page) and cells:
        pointers = struct.unpack_from(f">{cells}H", page, header)
        if min(pointers) < content or max(pointers) >= page_size:
            return False
    return True


def check_wal(view: SampleView) -> Check:
    head = view.head
    if len(head) < 32:
        return Check("sqlite-wal", False, "short-header", db=True)
    version, page_size = struct.unpack_from(">II", head, 4)
    page_size = _page_size(page_size)
    if version != 3007000 or page_size < 512 or page_size & (page_size - 1):
        return Check("sqlite-wal", False, "bad-header", db=True)
    return Check("sqlite-wal", True, db=True)


def check_pe(view: SampleView) -> Check:
    head = view.head
    if len(head) < 64:
        return Check("pe", False, "short-header")
    (lfanew,) = struct.unpack_from("<I", head, 0x3C)
    if lfanew + 6 > len(head):
        return Check("pe", lfanew < view.size, "" if lfanew < view.size else "bad-header")
    if head[lfanew : lfanew + 4] != b"PE\x00\x00":
        return Check("pe", False, "no-pe-signature")
    (machine,) = struct.unpack_from("<H", head, lfanew + 4)
    if machine not in _PE_MACHINES:
        return Check("pe", False, "bad-machine")
    return Check("pe", True)

"""Which bytes of a file detection looks at, and a read-only view over the captured ranges.

The plan depends only on the file size, so two versions of a file with the same size are sampled
at the same offsets and their per-range hashes can be compared. Middle blocks are aligned on
4 KiB, which is also the page size of most databases: each block is one whole page.
"""

from __future__ import annotations

from collections.abc import Sequence

HEAD = 8192
TAIL = 4096
BLOCK = 4096
MAX_BLOCKS = 12
WHOLE_FILE_LIMIT = 64 * 1024  # files up to this size are sampled whole


def sample_plan(size: int) -> list[tuple[int, int]]:
    """Byte ranges (offset, length) to capture from a file of ``size`` bytes.

    Sorted, non-overlapping, at most 64 KiB in total: the whole file when it is small, otherwise
    the head (8 KiB), the tail (4 KiB) and up to 12 aligned 4 KiB blocks spread evenly between.
    """
    if size <= 0:
        return []
    if size <= WHOLE_FILE_LIMIT:
        return [(0, size)]
    tail_start = size - TAIL
    plan = [(0, HEAD)]
    first = HEAD  # first aligned block start after the head (HEAD is a multiple of BLOCK)
    last = ((tail_start - BLOCK) // BLOCK) * BLOCK  # last aligned start that ends before the tail
    if last >= first:
        slots = (last - first) // BLOCK + 1
        count = min(MAX_BLOCKS, slots)
        starts: list[int] = []
        for i in range(count):
            # spread evenly over the aligned slots, including the first and the last
            slot = 0 if count == 1 else (i * (slots - 1)) // (count - 1)
            start = first + slot * BLOCK
            if not starts or start > starts[-1]:
                starts.append(start)
        plan.extend((s, BLOCK) for s in starts)
    plan.append((tail_start, TAIL))
    return plan


class SampleView:
    """Random access to the captured ranges of one file."""

    __slots__ = ("head", "ranges", "size", "tail")

    def __init__(self, size: int, ranges: Sequence[tuple[int, bytes]]) -> None:
        self.size = size
        # the archiver hands over bytes in offset order: keep them as they are (no copy)
        prev = -1
        for off, data in ranges:
            if off < prev or type(data) is not bytes:
                self.ranges = sorted(((o, bytes(d)) for o, d in ranges), key=lambda r: r[0])
                break
            prev = off
        else:
            self.ranges = list(ranges)
        rs = self.ranges
        self.head = rs[0][1] if rs and rs[0][0] == 0 else b""
        self.tail = rs[-1][1] if rs and rs[-1][0] + len(rs[-1][1]) == size else b""

    @property
    def whole(self) -> bool:
        """True when the captured ranges cover the entire file."""
        return len(self.ranges) == 1 and self.ranges[0][0] == 0 and len(self.head) == self.size

    def get(self, offset: int, length: int) -> bytes | None:
        """The bytes [offset, offset+length) if one captured range holds them all, else None."""
        if offset < 0 or length < 0:
            return None
        end = offset + length
        for off, data in self.ranges:
            if off <= offset and end <= off + len(data):
                return data[offset - off : end - off]
            if off > offset:
                return None  # sorted: no later range starts at or before ``offset``
        return None

    def middle(self) -> list[tuple[int, bytes]]:
        """Ranges other than the head and the tail (empty when the file was sampled whole)."""
        out = []
        for off, data in self.ranges:
            if off == 0 or off + len(data) == self.size:
                continue
            out.append((off, data))
        return out

    def find(self, needle: bytes) -> bool:
        """True if ``needle`` occurs in any captured range."""
        return any(needle in data for _, data in self.ranges)


class Check:
    """Outcome of a format validator: the detected type and whether its structure holds."""

    __slots__ = ("db", "enc", "entries", "kind", "valid", "why")

    def __init__(
        self,
        kind: str,
        valid: bool,
        why: str = "",
        *,
        enc: bool = False,
        entries: int | None = None,
        db: bool = False,
    ) -> None:
        self.kind = kind
        self.valid = valid
        self.why = why
        self.enc = enc
        self.entries = entries
        self.db = db

    def __repr__(self) -> str:
        return f"Check({self.kind!r}, valid={self.valid}, why={self.why!r}, enc={self.enc})"

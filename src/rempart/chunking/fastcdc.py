"""FastCDC chunking of streams with parameters chosen for small database pages.

A practice database changes a few percent of its pages a day: 1 MiB chunks would re-send
almost all of it, so the default targets ~64 KiB chunks (16 KiB minimum, 256 KiB maximum).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pyfastcdc import FastCDC

from rempart.core.errors import ConfigError


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024

    def __post_init__(self) -> None:
        if not (64 <= self.min_size < self.avg_size < self.max_size <= 16 * 1024 * 1024):
            raise ConfigError("chunker sizes must satisfy 64 <= min < avg < max <= 16 MiB")
        if not self.min_size <= _cdc_avg(self) <= self.max_size:  # pyfastcdc's own rule
            raise ConfigError("chunker sizes must satisfy min <= max(256, avg - min) <= max")

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ChunkerParams:
        return cls(int(d["min"]), int(d["avg"]), int(d["max"]))


def _cdc_avg(p: ChunkerParams) -> int:
    """The average size to ask of pyfastcdc: its effective average is that plus ``min_size``
    (cut-point skipping)."""
    return max(256, p.avg_size - p.min_size)


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


#: bytes read per system call; the buffer also holds up to ``max_size`` carried over
READ_SIZE = 1024 * 1024


class Chunker:
    """Reusable per thread (``pyfastcdc.FastCDC`` objects are not thread-safe, and the read
    buffer is reused from file to file)."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self._cdc = FastCDC(
            _cdc_avg(params),
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=seed,
        )
        self._max = params.max_size
        self._buf: bytearray | None = None
        self._buf2: bytearray | None = None  # the second buffer of ``batches(overlap=True)``
        self._recent: bytearray | None = None  # the buffer of the last list yielded

    def chunks(self, stream: Readable) -> Iterator[memoryview]:
        """Yield chunk views; each is valid only until the next one is requested."""
        for batch in self.batches(stream):
            yield from batch

    def batches(self, stream: Readable, *, overlap: bool = False) -> Iterator[list[memoryview]]:
        """Yield the chunks block by block, as lists of views valid until the next list is
        requested (the reading processes ask about a whole block's ids at once); with
        ``overlap``, until the list after it (two buffers used in turn: a reading process
        reads and hashes the next block while the parent answers about the last one), also
        across calls: the first list of a call is never in the buffer of the last list of
        the call before (a process reads the next file while the parent answers about the
        end of the last one).

        The same cut points as ``FastCDC.cut_stream`` (a cut depends only on the ``max_size``
        bytes from the chunk's start), but read in large blocks into buffers kept for the
        life of the chunker: one ``readinto`` per 1 MiB instead of per ~256 KiB, no buffer
        allocated per file, and at most ``max_size`` bytes moved per block (cut_stream moves
        the unread rest of its 512 KiB buffer after every 256 KiB)."""
        if self._buf is None:
            self._buf = bytearray(READ_SIZE + self._max)
        if overlap and self._buf2 is None:
            self._buf2 = bytearray(READ_SIZE + self._max)
        buf, maxs = self._buf, self._max
        other = self._buf2 if overlap else buf
        if overlap and self._recent is buf:  # the last call's final list may still be in use
            assert other is not None
            buf, other = other, buf
        view = memoryview(buf)
        cap = len(buf)
        readinto = stream.readinto
        start = end = 0
        eof = False
        while True:
            if not eof:
                if start:
                    tail = end - start
                    if overlap:  # the other buffer: the last list's views stay valid
                        assert other is not None
                        other[:tail] = view[start:end]
                        buf, other = other, buf
                        view = memoryview(buf)
                    else:
                        buf[:tail] = bytes(view[start:end])  # same length: no resize; never overlapping
                    start, end = 0, tail
                while end < cap:
                    n = readinto(view[end:])
                    if not n:
                        eof = True
                        break
                    end += n
            if start >= end:
                return
            last_complete = end if eof else end - maxs  # a chunk starting later may be cut short
            batch = []
            for c in self._cdc.cut_buf(view[start:end]):
                if not eof and start + c.offset > last_complete:
                    start += c.offset
                    break
                batch.append(c.data)
            else:
                start = end  # the last chunk ended exactly at the end of the buffer
            if batch:
                self._recent = buf
                yield batch
            if eof and start >= end:
                return

    def chunks_of(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        for c in self._cdc.cut_buf(buf):
            yield c.data

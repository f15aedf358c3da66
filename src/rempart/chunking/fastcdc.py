"""FastCDC chunking of streams with parameters chosen for small database pages.

A practice database changes a few percent of its pages a day: 1 MiB chunks would re-send
almost all of it, so the default targets ~64 KiB chunks (16 KiB minimum, 256 KiB maximum).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

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

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ChunkerParams:
        return cls(int(d["min"]), int(d["avg"]), int(d["max"]))


class Chunker:
    """Reusable per thread (``pyfastcdc.FastCDC`` objects are not thread-safe)."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        # pyfastcdc's effective average is avg_size + min_size (cut-point skipping)
        self._cdc = FastCDC(
            max(256, params.avg_size - params.min_size),
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=seed,
        )

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield chunk views; each is valid only until the next one is requested."""
        for c in self._cdc.cut_stream(stream):
            yield c.data

    def chunks_of(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        for c in self._cdc.cut_buf(buf):
            yield c.data

"""The id key: keyed BLAKE3 blob ids and the chunker's seed (see keys.py for the hierarchy).

A module of its own so that the archiver's reading processes import it without the HPKE and
key-serialisation machinery they never use."""

from __future__ import annotations

import os

import blake3


class IdKey:
    """Keys blob ids (keyed BLAKE3) and the chunker's gear table seed."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("id key must be 32 bytes")
        self.raw = bytes(raw)

    @classmethod
    def generate(cls) -> IdKey:
        return cls(os.urandom(32))

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.raw, max_threads=1).digest()

    def chunker_seed(self) -> int:
        d = blake3.blake3(b"rempart chunker seed", key=self.raw).digest()
        return int.from_bytes(d[:4], "little") or 1

    def __repr__(self) -> str:
        return "IdKey(<secret>)"

"""Blob encoding: optional zstd compression, then AES-256-GCM bound to the blob's type and id."""

from __future__ import annotations

import threading

import zstandard

from rempart.core.errors import IntegrityError
from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType

FLAG_RAW = 0
FLAG_ZSTD = 1
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None or _local.level != level:
        c = _local.c = zstandard.ZstdCompressor(level=level, write_content_size=True)
        _local.level = level
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def aad(btype: BlobType, blob_id: bytes) -> bytes:
    return bytes([btype]) + blob_id


def compress(data: bytes | memoryview, level: int) -> tuple[int, bytes | memoryview]:
    """Compress unless it saves less than 1/32 of the size; returns (flag, payload)."""
    if level <= 0 or len(data) < 64:
        return FLAG_RAW, data
    z = _compressor(level).compress(data)
    if len(z) < len(data) - (len(data) >> 5):
        return FLAG_ZSTD, z
    return FLAG_RAW, data


def seal_blob(key: DataKey, btype: BlobType, blob_id: bytes, flag: int, payload: bytes | memoryview) -> bytearray:
    """``nonce || AES-GCM(flag || payload)``; ``payload`` is copied once, into the result."""
    return key.seal_prefixed(flag, payload, aad(btype, blob_id))


def seal_blob_into(key: DataKey, btype: BlobType, blob_id: bytes, flag: int, payload: bytes | memoryview,
                   out: memoryview) -> int:
    """``seal_blob`` written at the start of ``out``; returns its length."""
    return key.seal_prefixed_into(flag, payload, aad(btype, blob_id), out)


def open_blob(key: DataKey, btype: BlobType, blob_id: bytes, sealed: bytes | memoryview) -> bytes:
    plain = key.open(sealed, aad(btype, blob_id))
    flag = plain[0] if plain else -1
    if flag == FLAG_RAW:
        return plain[1:]
    if flag == FLAG_ZSTD:
        try:
            return _decompressor().decompress(memoryview(plain)[1:])
        except zstandard.ZstdError as exc:
            raise IntegrityError("blob decompression failed") from exc
    raise IntegrityError("blob has an unknown compression flag")

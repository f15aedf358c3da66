"""Identifiers: 32-byte ids shown as 64 lowercase hex characters."""

from __future__ import annotations

import hashlib
import re

from rempart.core.errors import UserError

ID_LEN = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hex_id(name: str) -> bool:
    return bool(_HEX64.match(name))


def parse_hex_id(name: str) -> bytes:
    if not is_hex_id(name):
        raise UserError(f"not a valid id: {name[:80]!r} (expected 64 hex characters)")
    return bytes.fromhex(name)


def short(hex_id: str) -> str:
    return hex_id[:8]

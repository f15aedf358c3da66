"""AES-256-GCM with random 96-bit nonces: ``seal`` returns nonce || ciphertext || tag."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rempart.core.errors import DecryptionError

NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
KEY_LEN = 32


class DataKey:
    """A 256-bit AES-GCM key; one per backup run, wrapped to the recovery public key."""

    __slots__ = ("_aead", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise ValueError("data key must be 32 bytes")
        self._raw = raw
        self._aead = AESGCM(raw)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=256))

    @property
    def raw(self) -> bytes:
        return self._raw

    def seal(self, plaintext: bytes | memoryview, aad: bytes | bytearray) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_prefixed(self, prefix: int, payload: bytes | memoryview, aad: bytes) -> bytearray:
        """The same bytes as ``seal(bytes([prefix]) + payload, aad)``, copying ``payload`` once
        instead of three times: the plaintext is laid out in the output buffer and encrypted in
        place (OpenSSL supports exactly overlapping input and output)."""
        out = bytearray(NONCE_LEN + 1 + len(payload) + TAG_LEN)
        self.seal_prefixed_into(prefix, payload, aad, memoryview(out))
        return out

    def seal_prefixed_into(self, prefix: int, payload: bytes | memoryview, aad: bytes, out: memoryview) -> int:
        """``seal_prefixed`` written at the start of ``out`` (e.g. straight into a pack buffer);
        returns the number of bytes written: ``len(payload) + 1 + OVERHEAD``."""
        n = len(payload)
        end = NONCE_LEN + 1 + n + TAG_LEN
        if len(out) < end:
            raise ValueError("output buffer too small for the sealed blob")
        nonce = os.urandom(NONCE_LEN)
        out[:NONCE_LEN] = nonce
        out[NONCE_LEN] = prefix
        out[NONCE_LEN + 1 : NONCE_LEN + 1 + n] = payload
        self._aead.encrypt_into(nonce, out[NONCE_LEN : NONCE_LEN + 1 + n], aad, out[NONCE_LEN:end])
        return end

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        sealed = memoryview(sealed)
        if len(sealed) < OVERHEAD:
            raise DecryptionError("ciphertext too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
        except InvalidTag:
            raise DecryptionError("authentication failed: wrong key or tampered data") from None

    def __repr__(self) -> str:  # never print key material
        return "DataKey(<secret>)"

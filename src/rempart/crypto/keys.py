"""The key hierarchy.

* **Recovery key** (X25519): private half only in the offline recovery kit; the public half is
  in the repository config and on the agent.
* **Id key** (32 random bytes): keys BLAKE3 for blob ids and seeds the chunker; held by the
  agent (it can compute ids, not decrypt), and sealed to the recovery key in the config.
* **Data keys** (AES-256-GCM): fresh for every backup run, wrapped with HPKE
  (DHKEM-X25519, HKDF-SHA256, AES-256-GCM) to the recovery public key in an *envelope* that
  every pack and snapshot of that run carries.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from rempart.core.errors import DecryptionError, IntegrityError
from rempart.crypto.aead import DataKey
from rempart.crypto.idkey import IdKey

__all__ = ["IdKey"]  # re-exported: defined apart so the reading processes import no HPKE

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_INFO_DATA_KEY = b"rempart v1 data key"
_INFO_SEALED = b"rempart v1 sealed secret"
ENVELOPE_VERSION = 1
FP_LEN = 8
#: version(1) + recipient fingerprint(8) + HPKE enc(32) + wrapped key (32 + 16 tag)
ENVELOPE_LEN = 1 + FP_LEN + 32 + 32 + 16


def _raw_public(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes_raw()  # not serialization's: importing it loads ~12 modules more


class RecoveryPublicKey:
    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)
        self._key = X25519PublicKey.from_public_bytes(self.raw)
        self.fingerprint = hashlib.sha256(b"rempart recovery key" + self.raw).digest()[:FP_LEN]

    def wrap(self, data_key: DataKey) -> bytes:
        """Envelope carrying ``data_key`` for the holder of the recovery private key."""
        ct = _SUITE.encrypt(data_key.raw, self._key, info=_INFO_DATA_KEY + self.fingerprint)
        env = struct.pack("<B", ENVELOPE_VERSION) + self.fingerprint + ct
        assert len(env) == ENVELOPE_LEN
        return env

    def seal(self, secret: bytes) -> bytes:
        return self.fingerprint + _SUITE.encrypt(secret, self._key, info=_INFO_SEALED + self.fingerprint)


class RecoveryPrivateKey:
    def __init__(self, raw: bytes) -> None:
        self._key = X25519PrivateKey.from_private_bytes(bytes(raw))
        self.public = RecoveryPublicKey(_raw_public(self._key.public_key()))
        self._cache: dict[bytes, DataKey] = {}

    @classmethod
    def generate(cls) -> RecoveryPrivateKey:
        return cls(os.urandom(32))

    @property
    def raw(self) -> bytes:
        return self._key.private_bytes_raw()

    def unwrap(self, envelope: bytes) -> DataKey:
        env = bytes(envelope)
        cached = self._cache.get(env)
        if cached is not None:
            return cached
        if len(env) != ENVELOPE_LEN or env[0] != ENVELOPE_VERSION:
            raise IntegrityError("malformed key envelope")
        fp = env[1 : 1 + FP_LEN]
        if fp != self.public.fingerprint:
            raise DecryptionError("this data was encrypted to another recovery key")
        try:
            raw = _SUITE.decrypt(env[1 + FP_LEN :], self._key, info=_INFO_DATA_KEY + fp)
        except Exception:
            raise DecryptionError("cannot unwrap data key: wrong recovery key or tampered envelope") from None
        key = DataKey(raw)
        self._cache[env] = key
        return key

    def unseal(self, sealed: bytes) -> bytes:
        fp, ct = sealed[:FP_LEN], sealed[FP_LEN:]
        if fp != self.public.fingerprint:
            raise DecryptionError("this secret was sealed to another recovery key")
        try:
            return _SUITE.decrypt(ct, self._key, info=_INFO_SEALED + fp)
        except Exception:
            raise DecryptionError("cannot unseal: wrong recovery key or tampered data") from None

    def __repr__(self) -> str:
        return "RecoveryPrivateKey(<secret>)"

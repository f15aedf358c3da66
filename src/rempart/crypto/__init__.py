"""Cryptography: AEAD for blobs, HPKE key wrapping to the recovery key, keyed blob ids, kits.

Only primitives from ``cryptography`` (AES-256-GCM, X25519 HPKE RFC 9180, Argon2id) and BLAKE3
in keyed mode. May import only rempart.core.
"""

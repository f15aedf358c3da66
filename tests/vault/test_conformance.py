"""VaultBackend passes the shared storage conformance suite against a real vault process.

The suite's credential is the provider admin token (it may create, read and delete); the
practice's policy has min_age_days = 0 so that deletion of fresh objects is allowed. Agents'
backup tokens never may delete: see test_isolation.py. Content is valid for the vault: packs
parse, index files name stored packs, snapshots reference stored blobs.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from rempart.core.errors import AlreadyExists, IntegrityError
from rempart.repository.format import (
    ENVELOPE_LEN,
    BlobType,
    PackEntry,
    encode_header_body,
    encode_index,
    encode_snapshot_prefix,
    pack_trailer,
)
from rempart.storage.base import Backend, FileType, Handle
from rempart.storage.vaultclient import VaultBackend
from rempart.testing.backend_suite import BackendSuite, SimulatedCrash

from .objects import sha


def pack_for(i: int) -> tuple[bytes, list[tuple[bytes, int]]]:
    rng = random.Random(f"pack-{i}")
    sizes = [rng.choice([1, 17, 4096, 65_537, 300_000]) for _ in range(rng.randint(1, 3))]
    ids = [rng.randbytes(32) for _ in sizes]
    body = encode_header_body(rng.randbytes(ENVELOPE_LEN), [(int(BlobType.DATA), b, n) for b, n in zip(ids, sizes)])
    data = b"".join(rng.randbytes(n) for n in sizes) + pack_trailer(body + rng.randbytes(28))
    return data, list(zip(ids, sizes))


class TestVaultBackend(BackendSuite):
    file_types = (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT)
    identical_resave_is_noop = True
    overwrite_errors = (AlreadyExists, IntegrityError)
    threads = 6
    _backend: Backend | None = None

    @pytest.fixture
    def backend(self, vault: Any) -> Iterator[Backend]:
        name, _ = vault.add_practice(min_age_days=0)
        b = vault.backend(name, vault.admin_token)
        self._backend = b
        yield b
        b.close()

    def _ensure_pack(self, i: int) -> tuple[str, list[tuple[bytes, int]]]:
        data, blobs = pack_for(i)
        assert self._backend is not None
        self._backend.save(Handle(FileType.DATA, sha(data)), data)  # identical re-save is a no-op
        return sha(data), blobs

    def make_content(self, ftype: FileType, i: int) -> bytes:
        if ftype is FileType.DATA:
            return pack_for(i)[0]
        name, blobs = self._ensure_pack(i)
        if ftype is FileType.INDEX:
            es, off = [], 0
            for b, n in blobs:
                es.append(PackEntry(BlobType.DATA, b, off, n))
                off += n
            return encode_index([(bytes.fromhex(name), es)])
        rng = random.Random(f"snap-{i}")
        plain = {"v": 1, "time": "2026-01-05T08:00:00Z", "tree": blobs[0][0].hex(), "parent": None, "host": "h",
                 "stats": {}, "detection": {"verdict": "clean"}}
        return encode_snapshot_prefix(plain, [b for b, _ in blobs], rng.randbytes(ENVELOPE_LEN)) + rng.randbytes(40)

    def interrupt_save(self, backend: Backend, h: Handle, data: bytes) -> None:
        """Send the headers and half of the body over a raw TLS socket, then drop the connection."""
        assert isinstance(backend, VaultBackend)
        host, port = backend.base.split("://")[1].split(":")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        token = backend.headers["Authorization"]
        path = f"/v1/p/{backend.practice}/{h.type.value}/{h.name}"
        with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n".encode())
            s.sendall(data[: len(data) // 2])
        raise SimulatedCrash("connection dropped half-way through the upload")

"""Build plain-format objects (packs, index files, snapshots) the way a client would, with random
bytes standing in for ciphertext: the vault never has a key, so it cannot tell the difference."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from rempart.repository.format import (
    ENVELOPE_LEN,
    BlobType,
    PackEntry,
    encode_header_body,
    encode_index,
    encode_snapshot_prefix,
    pack_trailer,
)
from rempart.storage.base import FileType, Handle


@dataclass
class Obj:
    name: str
    data: bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_pack(blob_sizes: list[int] | None = None, *, ids: list[bytes] | None = None) -> tuple[Obj, list[bytes]]:
    sizes = blob_sizes or [100, 200]
    ids = ids or [os.urandom(32) for _ in sizes]
    blobs = [os.urandom(n) for n in sizes]
    body = encode_header_body(os.urandom(ENVELOPE_LEN), [(int(BlobType.DATA), i, n) for i, n in zip(ids, sizes)])
    header = body + os.urandom(28)
    data = b"".join(blobs) + pack_trailer(header)
    return Obj(sha(data), data), list(ids)


def make_index(packs: list[tuple[str, list[bytes], list[int]]]) -> Obj:
    items = []
    for name, ids, sizes in packs:
        off = 0
        es = []
        for i, n in zip(ids, sizes):
            es.append(PackEntry(BlobType.DATA, i, off, n))
            off += n
        items.append((bytes.fromhex(name), es))
    data = encode_index(items)
    return Obj(sha(data), data)


def make_snapshot(refs: list[bytes], *, verdict: str = "clean", time: str = "2026-01-05T08:00:00Z") -> Obj:
    plain = {"v": 1, "time": time, "tree": (refs[0] if refs else os.urandom(32)).hex(), "parent": None,
             "host": "h1", "stats": {"files": 1}, "detection": {"verdict": verdict}}
    data = encode_snapshot_prefix(plain, refs, os.urandom(ENVELOPE_LEN)) + os.urandom(60)
    return Obj(sha(data), data)


def make_config() -> bytes:
    return json.dumps({"version": 1, "id": os.urandom(8).hex()}).encode()


def garbage_and_one_snapshot(backend: Any, garbage: int) -> tuple[Obj, Obj, list[bytes]]:
    """Store ``garbage`` small packs no snapshot references, then one pack and a snapshot of it
    (what the GC kill tests start from); returns (snapshot, kept pack, its blob ids)."""
    for _ in range(garbage):
        pk, _ = make_pack([300])
        backend.save(Handle(FileType.DATA, pk.name), pk.data)
    keep, ids = make_pack([5000])
    backend.save(Handle(FileType.DATA, keep.name), keep.data)
    snap = make_snapshot(ids)
    backend.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
    return snap, keep, ids

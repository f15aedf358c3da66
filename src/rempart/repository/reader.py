"""Read sessions: decrypt blobs and snapshot metadata with the recovery private key (kit holders)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator

from rempart.core.errors import IntegrityError
from rempart.crypto.aead import DataKey
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.blobs import open_blob
from rempart.repository.format import BlobType, SnapshotPlain
from rempart.repository.repo import Repository
from rempart.storage.base import FileType, Handle


class ReadSession:
    """Decrypts blobs and snapshot metadata: needs the recovery private key (the kit).

    ``load_blobs`` reads runs of blobs that lie back to back in a pack with one request (a file
    written in one go is usually one run), which is what makes restores fast over a vault link
    without holding whole packs in memory. An optional LRU of whole packs (``pack_cache`` bytes,
    off by default) serves callers that jump around.
    """

    MAX_RUN = 8 * 1024 * 1024

    def __init__(self, repo: Repository, private_key: RecoveryPrivateKey, id_key: IdKey | None = None,
                 *, pack_cache: int = 0) -> None:
        self.repo = repo
        self.private_key = private_key
        self.id_key = id_key
        self._envelopes: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._packs: OrderedDict[bytes, bytes] = OrderedDict()
        self._pack_cache = pack_cache
        self._fetching: dict[bytes, threading.Lock] = {}

    def pack_key(self, pack: bytes) -> DataKey:
        with self._lock:
            env = self._envelopes.get(pack)
        if env is None:
            env = self.repo.read_pack_header(pack.hex()).envelope
            with self._lock:
                self._envelopes[pack] = env
        return self.private_key.unwrap(env)

    def load_blob(self, blob_id: bytes, *, verify: bool = False) -> bytes:
        loc = self.repo.index.get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} is missing from the repository")
        pack = self._pack(loc.pack)
        if pack is None:
            sealed: bytes | memoryview = self.repo.backend.load(
                Handle(FileType.DATA, loc.pack.hex()), offset=loc.offset, length=loc.length)
        else:
            if loc.offset + loc.length > len(pack):
                raise IntegrityError(f"pack {loc.pack.hex()[:12]} is shorter than its index says")
            sealed = memoryview(pack)[loc.offset : loc.offset + loc.length]
        return self.decode(loc.pack, loc.type, blob_id, sealed, verify=verify)

    def load_blobs(self, ids: list[bytes], *, verify: bool = False) -> Iterator[bytes]:
        """The plaintexts of ``ids`` in order, coalescing contiguous reads."""
        i = 0
        last: tuple[bytes, bytes] | None = None
        while i < len(ids):
            if last is not None and ids[i] == last[0]:
                yield last[1]  # repeated blob (zeros of a sparse file): decoded once
                i += 1
                continue
            first = self.repo.index.get(ids[i])
            if first is None or self._pack_cache > 0:
                data = self.load_blob(ids[i], verify=verify)
                last = (ids[i], data)
                yield data
                i += 1
                continue
            run = [(ids[i], first)]
            end = first.offset + first.length
            j = i + 1
            while j < len(ids):
                loc = self.repo.index.get(ids[j])
                if (loc is None or loc.pack != first.pack or loc.offset != end
                        or end + loc.length - first.offset > self.MAX_RUN):
                    break
                run.append((ids[j], loc))
                end += loc.length
                j += 1
            raw = memoryview(self.repo.backend.load(Handle(FileType.DATA, first.pack.hex()),
                                                    offset=first.offset, length=end - first.offset))
            for bid, loc in run:
                data = self.decode(loc.pack, loc.type, bid, raw[loc.offset - first.offset :
                                                             loc.offset - first.offset + loc.length], verify=verify)
                last = (bid, data)
                yield data
            i = j

    def _pack(self, pack_id: bytes) -> bytes | None:
        """The whole pack from the LRU (fetched once even when threads race), or None when
        caching is off."""
        if self._pack_cache <= 0:
            return None
        with self._lock:
            data = self._packs.get(pack_id)
            if data is not None:
                self._packs.move_to_end(pack_id)
                return data
            fetch = self._fetching.setdefault(pack_id, threading.Lock())
        with fetch:
            with self._lock:
                data = self._packs.get(pack_id)
            if data is None:
                data = self.repo.backend.load(Handle(FileType.DATA, pack_id.hex()))
                with self._lock:
                    self._packs[pack_id] = data
                    total = sum(len(v) for v in self._packs.values())
                    while total > self._pack_cache and len(self._packs) > 1:
                        total -= len(self._packs.popitem(last=False)[1])
        with self._lock:
            self._fetching.pop(pack_id, None)
        return data

    def decode(self, pack: bytes, btype: BlobType, blob_id: bytes, sealed: bytes | memoryview, *,
               verify: bool = False) -> bytes:
        plain = open_blob(self.pack_key(pack), btype, blob_id, sealed)
        if verify and self.id_key is not None and self.id_key.blob_id(plain) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} does not match its id")
        return plain

    def snapshot_meta(self, snap: SnapshotPlain) -> dict[str, object]:
        key = self.private_key.unwrap(snap.envelope)
        doc = json.loads(key.open(snap.sealed_meta, snap.authenticated))
        if not isinstance(doc, dict):
            raise IntegrityError("snapshot metadata is malformed")
        return doc

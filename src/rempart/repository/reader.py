"""Read sessions: decrypt blobs and snapshot metadata with the recovery private key (kit holders)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator

import zstandard

from rempart.core.errors import IntegrityError
from rempart.crypto.aead import DataKey
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.blobs import FLAG_RAW, FLAG_ZSTD, aad, open_blob
from rempart.repository.format import BlobType, SnapshotPlain
from rempart.repository.index import BlobLocation
from rempart.repository.repo import Repository
from rempart.storage.base import FileType, Handle

_local = threading.local()


def _decompress(plain: bytes) -> bytes:
    """zstd payload after the flag byte (the frame carries its size; releases the GIL)."""
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    try:
        out: bytes = d.decompress(memoryview(plain)[1:])
    except zstandard.ZstdError as exc:
        raise IntegrityError("blob decompression failed") from exc
    return out


class ReadSession:
    """Decrypts blobs and snapshot metadata: needs the recovery private key (the kit).

    ``load_blobs`` reads runs of blobs that lie back to back in a pack with one request (a file
    written in one go is usually one run), which is what makes restores fast over a vault link
    without holding whole packs in memory. An optional LRU of whole packs (``pack_cache`` bytes,
    off by default) serves callers that jump around.
    """

    MAX_RUN = 4 * 1024 * 1024
    LOOKUP_WINDOW = 512

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
        self._keys: dict[bytes, DataKey] = {}

    def pack_key(self, pack: bytes) -> DataKey:
        """The data key of ``pack``: its header is read and its envelope unwrapped once."""
        key = self._keys.get(pack)
        if key is not None:
            return key
        with self._lock:
            env = self._envelopes.get(pack)
        if env is None:
            env = self.repo.read_pack_header(pack.hex()).envelope
            with self._lock:
                self._envelopes[pack] = env
        key = self.private_key.unwrap(env)
        self._keys[pack] = key
        return key

    def locate(self, ids: list[bytes]) -> list[BlobLocation | None]:
        """Index lookups for ``ids`` in order (batched queries)."""
        found = self.repo.index.get_many(ids)
        return [found.get(i) for i in ids]

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

    def load_blobs(self, ids: list[bytes], *, verify: bool = False,
                   locations: list[BlobLocation | None] | None = None) -> Iterator[bytes | memoryview]:
        """The plaintexts of ``ids`` in order, coalescing contiguous reads.

        Blobs that lie back to back in one pack (a file written in one go, or small files backed
        up one after the other) are read with one request of at most ``MAX_RUN`` bytes. Stored
        (uncompressed) blobs come back as memoryviews into the decrypted buffer, not copies: use
        them before asking for many more. A repeated blob (zeros of a sparse file) is decoded once.
        ``locations`` (from :meth:`locate`, same order) saves the index lookups.
        """
        if self._pack_cache > 0:  # remote: whole packs from the LRU
            yield from self._load_cached(ids, verify)
            return
        last_id: bytes | None = None
        last: bytes | memoryview = b""
        for w in range(0, len(ids), self.LOOKUP_WINDOW):
            window = ids[w : w + self.LOOKUP_WINDOW]
            locs = self.locate(window) if locations is None else locations[w : w + self.LOOKUP_WINDOW]
            j = 0
            while j < len(window):
                if window[j] == last_id:
                    yield last
                    j += 1
                    continue
                first = locs[j]
                if first is None:
                    raise IntegrityError(f"blob {window[j].hex()[:12]} is missing from the repository")
                end = first.offset + first.length
                k = j + 1
                while k < len(window):
                    loc = locs[k]
                    if (loc is None or loc.pack != first.pack or loc.offset != end
                            or end + loc.length - first.offset > self.MAX_RUN):
                        break
                    end += loc.length
                    k += 1
                raw = memoryview(self.repo.backend.load(Handle(FileType.DATA, first.pack.hex()),
                                                        offset=first.offset, length=end - first.offset))
                key = self.pack_key(first.pack)
                for m in range(j, k):
                    loc = locs[m]
                    assert loc is not None
                    rel = loc.offset - first.offset
                    last = self._open_view(key, loc.type, window[m], raw[rel : rel + loc.length], verify)
                    last_id = window[m]
                    yield last
                j = k

    def _load_cached(self, ids: list[bytes], verify: bool) -> Iterator[bytes]:
        last_id: bytes | None = None
        last = b""
        for bid in ids:
            if bid != last_id:
                last, last_id = self.load_blob(bid, verify=verify), bid
            yield last

    def _open_view(self, key: DataKey, btype: BlobType, blob_id: bytes, sealed: memoryview,
                   verify: bool) -> bytes | memoryview:
        """``open_blob`` without the copy of a stored blob's plaintext (a view past the flag)."""
        plain = key.open(sealed, aad(btype, blob_id))
        flag = plain[0] if plain else -1
        out: bytes | memoryview
        if flag == FLAG_RAW:
            out = memoryview(plain)[1:]
        elif flag == FLAG_ZSTD:
            out = _decompress(plain)
        else:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} has an unknown compression flag")
        if verify and self.id_key is not None and self.id_key.blob_id(out) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} does not match its id")
        return out

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

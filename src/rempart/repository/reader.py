"""Read sessions: decrypt blobs and snapshot metadata with the recovery private key (kit holders)."""

from __future__ import annotations

import json
import struct
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import zstandard

from rempart.core.errors import DecryptionError, IntegrityError
from rempart.crypto.aead import DataKey
from rempart.repository.blobs import FLAG_RAW, FLAG_ZSTD, aad, open_blob
from rempart.repository.format import ENVELOPE_LEN, HEADER_MAGIC, PACK_MAGIC, VERSION, BlobType
from rempart.storage.base import FileType, Handle

if TYPE_CHECKING:  # a restore process imports this module for open_view: keep its start light
    from concurrent.futures import Future, ThreadPoolExecutor

    from rempart.crypto.keys import IdKey, RecoveryPrivateKey
    from rempart.repository.format import SnapshotPlain
    from rempart.repository.index import BlobLocation
    from rempart.repository.repo import Repository

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


def open_view(key: DataKey, btype: BlobType, blob_id: bytes, sealed: bytes | memoryview) -> bytes | memoryview:
    """``open_blob`` without the copy of a stored blob's plaintext (a view past the flag)."""
    plain = key.open(sealed, aad(btype, blob_id))
    flag = plain[0] if plain else -1
    if flag == FLAG_RAW:
        return memoryview(plain)[1:]
    if flag == FLAG_ZSTD:
        return _decompress(plain)
    raise IntegrityError(f"blob {blob_id.hex()[:12]} has an unknown compression flag")


class ReadSession:
    """Decrypts blobs and snapshot metadata: needs the recovery private key (the kit).

    ``load_blobs`` reads neighbouring blobs of a pack with one ranged request (a file written in
    one go is usually one run; small files backed up one after the other are neighbours too), so
    restores are fast over a vault link without fetching or holding whole packs. ``max_gap``
    lets a run step over up to that many unneeded bytes between two wanted blobs (worth it over
    a network, where a request costs a round trip); ``readahead`` keeps that many further runs
    being fetched (on a small shared pool) while the current one is decrypted and written.
    Memory per stream: at most ``(1 + readahead) * max_run`` bytes of sealed data.
    """

    MAX_RUN = 4 * 1024 * 1024
    LOOKUP_WINDOW = 512

    def __init__(self, repo: Repository, private_key: RecoveryPrivateKey, id_key: IdKey | None = None,
                 *, max_gap: int = 0, readahead: int = 0, max_run: int | None = None) -> None:
        self.repo = repo
        self.private_key = private_key
        self.id_key = id_key
        self.max_gap = max(0, max_gap)
        self.max_run = max_run or self.MAX_RUN
        self.readahead = max(0, readahead)
        self._lock = threading.Lock()
        self._fetching: dict[bytes, threading.Lock] = {}
        self._keys: dict[bytes, DataKey] = {}
        self._pool: ThreadPoolExecutor | None = None

    def pack_key(self, pack: bytes) -> DataKey:
        """The data key of ``pack``: its header is read and its envelope unwrapped once."""
        key = self._keys.get(pack)
        if key is not None:
            return key
        with self._lock:
            fetch = self._fetching.setdefault(pack, threading.Lock())
        with fetch:  # read once even when several readers meet a new pack at the same time
            key = self._keys.get(pack)
            if key is None:
                key = self._unwrap(pack)
                self._keys[pack] = key
        return key

    def _unwrap(self, pack: bytes) -> DataKey:
        """The envelope from where the index says the header begins (one ranged read); if the
        bytes there are not a header, or do not unwrap, from the trailer (three reads)."""
        name = pack.hex()
        head = self._head_at(name, self.repo.index.pack_end(pack))
        if head is not None:
            try:
                return self.private_key.unwrap(head)
            except (IntegrityError, DecryptionError):  # not this pack's envelope: read the trailer
                pass
        return self.private_key.unwrap(self._envelope(name))

    def _head_at(self, name: str, start: int | None) -> bytes | None:
        """The envelope of a header that begins at ``start`` (one read), or None."""
        fixed = len(HEADER_MAGIC) + 1 + ENVELOPE_LEN
        if start is None or start < 0:
            return None
        try:
            head = self.repo.backend.load(Handle(FileType.DATA, name), offset=start, length=fixed)
        except IntegrityError:  # beyond the end: the index was wrong
            return None
        if len(head) != fixed or head[:4] != HEADER_MAGIC or head[4] != VERSION:
            return None
        return bytes(head[5:fixed])

    def _envelope(self, name: str) -> bytes:
        """The key envelope of pack ``name``: its trailer, then only the header's first bytes
        (parsing every entry of the header, as the index does, is not needed to decrypt)."""
        h = Handle(FileType.DATA, name)
        size = self.repo.backend.stat(h).size
        fixed = len(HEADER_MAGIC) + 1 + ENVELOPE_LEN
        if size < 8 + fixed:
            raise IntegrityError(f"pack {name[:12]} is too short to be a pack")
        trailer = self.repo.backend.load(h, offset=size - 8, length=8)
        (hlen,) = struct.unpack("<I", trailer[:4])
        if trailer[4:] != PACK_MAGIC or hlen + 8 > size or hlen < fixed:
            raise IntegrityError(f"pack {name[:12]} has no valid trailer")
        head = self.repo.backend.load(h, offset=size - 8 - hlen, length=fixed)
        if head[:4] != HEADER_MAGIC or head[4] != VERSION:
            raise IntegrityError(f"pack {name[:12]}: pack header is malformed")
        return bytes(head[5:fixed])

    def locate(self, ids: list[bytes]) -> list[BlobLocation | None]:
        """Index lookups for ``ids`` in order (batched queries)."""
        found = self.repo.index.get_many(ids)
        return [found.get(i) for i in ids]

    def load_blob(self, blob_id: bytes, *, verify: bool = False) -> bytes:
        loc = self.repo.index.get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} is missing from the repository")
        sealed = self.repo.backend.load(Handle(FileType.DATA, loc.pack.hex()), offset=loc.offset, length=loc.length)
        return self.decode(loc.pack, loc.type, blob_id, sealed, verify=verify)

    def runs(self, locs: list[BlobLocation | None]) -> Iterator[tuple[int, int, bytes, int, int]]:
        """Split ``locs`` into runs ``(first, stop, pack, start, end)``: ``locs[first:stop]`` all
        lie in ``pack`` within bytes ``start..end`` (at most ``max_run``), each at most
        ``max_gap`` bytes after the run so far (a blob repeated inside the run costs nothing).
        A missing blob is a run of its own with ``start == end == -1``."""
        j = 0
        while j < len(locs):
            first = locs[j]
            if first is None:
                yield j, j + 1, b"", -1, -1
                j += 1
                continue
            start, end = first.offset, first.offset + first.length
            k = j + 1
            while k < len(locs):
                loc = locs[k]
                if loc is None or loc.pack != first.pack or loc.offset < start or loc.offset > end + self.max_gap:
                    break
                new_end = max(end, loc.offset + loc.length)
                if new_end - start > self.max_run:
                    break
                end = new_end
                k += 1
            yield j, k, first.pack, start, end
            j = k

    def _fetch(self, pack: bytes, start: int, end: int) -> memoryview:
        if start < 0:  # a missing blob: reported when the reader reaches it
            return memoryview(b"")
        return memoryview(self.repo.backend.load(Handle(FileType.DATA, pack.hex()), offset=start, length=end - start))

    def _fetched(self, plan: Iterator[tuple[int, int, bytes, int, int]]
                 ) -> Iterator[tuple[int, int, bytes, int, memoryview]]:
        """The runs of ``plan`` with their bytes, ``readahead`` runs fetched ahead."""
        if not self.readahead:
            for j, k, pack, start, end in plan:
                yield j, k, pack, start, self._fetch(pack, start, end)
            return
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readahead")
            pool = self._pool
        pending: deque[tuple[int, int, bytes, int, Future[memoryview]]] = deque()
        try:
            for j, k, pack, start, end in plan:
                pending.append((j, k, pack, start, pool.submit(self._fetch, pack, start, end)))
                if len(pending) > self.readahead:
                    j0, k0, p0, s0, fut = pending.popleft()
                    yield j0, k0, p0, s0, fut.result()
            while pending:
                j0, k0, p0, s0, fut = pending.popleft()
                yield j0, k0, p0, s0, fut.result()
        finally:
            for *_, fut in pending:
                fut.cancel()

    def load_blobs(self, ids: list[bytes], *, verify: bool = False,
                   locations: list[BlobLocation | None] | None = None) -> Iterator[bytes | memoryview]:
        """The plaintexts of ``ids`` in order, coalescing neighbouring reads (see :meth:`runs`).

        Stored (uncompressed) blobs come back as memoryviews into the decrypted buffer, not
        copies: use them before asking for many more. A repeated blob (zeros of a sparse file) is
        decoded once. ``locations`` (from :meth:`locate`, same order) saves the index lookups.
        """
        last_id: bytes | None = None
        last: bytes | memoryview = b""
        for w in range(0, len(ids), self.LOOKUP_WINDOW):
            window = ids[w : w + self.LOOKUP_WINDOW]
            locs = self.locate(window) if locations is None else locations[w : w + self.LOOKUP_WINDOW]
            for j, k, pack, start, raw in self._fetched(self.runs(locs)):
                if start < 0:
                    if window[j] == last_id:
                        yield last
                        continue
                    raise IntegrityError(f"blob {window[j].hex()[:12]} is missing from the repository")
                key = self.pack_key(pack)
                for m in range(j, k):
                    if window[m] != last_id:
                        loc = locs[m]
                        assert loc is not None
                        rel = loc.offset - start
                        last = self._open_view(key, loc.type, window[m], raw[rel : rel + loc.length], verify)
                        last_id = window[m]
                    yield last

    def _open_view(self, key: DataKey, btype: BlobType, blob_id: bytes, sealed: memoryview,
                   verify: bool) -> bytes | memoryview:
        out = open_view(key, btype, blob_id, sealed)
        if verify and self.id_key is not None and self.id_key.blob_id(out) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} does not match its id")
        return out

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

"""Repository access: the index, write sessions (agent) and read sessions (kit holders)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import cast

from rempart.core.errors import AlreadyExists, IntegrityError, NotFound
from rempart.crypto.aead import OVERHEAD, DataKey
from rempart.crypto.keys import IdKey
from rempart.repository.blobs import compress, seal_blob
from rempart.repository.config import RepoConfig, load_config
from rempart.repository.format import (
    BlobType,
    PackEntry,
    PackHeader,
    SnapshotPlain,
    encode_index_pack,
    encode_snapshot_prefix,
    join_index,
    pack_tail_size,
    parse_snapshot,
    read_pack_header,
)
from rempart.repository.index import BlobIndex
from rempart.repository.packer import FullPack, Packer
from rempart.repository.refset import RefSet
from rempart.storage.base import Backend, FileType, Handle

#: every this many packs stored, the index cache commits and an index file is written: blob
#: ids are random, so each commit rewrites most of the cache's b-tree leaves (a commit per pack
#: wrote ~140 MB of SQLite pages for a 1.7 GB first backup; docs/benchmarks.md, session 8)
INDEX_EVERY_PACKS = 16


class Repository:
    def __init__(self, backend: Backend, config: RepoConfig) -> None:
        self.backend = backend
        self.config = config
        self.index = BlobIndex(repo_id=config.id)

    @classmethod
    def open(cls, backend: Backend) -> Repository:
        return cls(backend, load_config(backend))

    def use_index_cache(self, path: Path) -> None:
        """Keep the blob index in ``path`` between runs (the agent's state folder), so that
        ``load_index`` downloads only index files it has not seen."""
        self.index.close()
        self.index = BlobIndex(path, repo_id=self.config.id)

    def close(self) -> None:
        self.index.close()

    # --- index --------------------------------------------------------------------------

    def load_index(self, *, scan_packs: bool = True) -> int:
        """Load the index files not seen yet; with ``scan_packs`` (the default) first list the
        packs, forget indexed packs the storage no longer holds, take from index files only
        packs that exist (a blob stored twice must not be located in a vanished copy), then
        read the plain headers of packs no index file names (left by a killed backup).
        Returns the number of packs scanned."""
        present: set[bytes] | None = None
        packs = []
        if scan_packs:
            packs = list(self.backend.list(FileType.DATA))
            present = {bytes.fromhex(fi.name) for fi in packs}
            self.index.retain_packs(present)  # forget collected packs
        for fi in self.backend.list(FileType.INDEX):
            if self.index.has_index_file(fi.name):
                continue
            try:
                data = self.backend.load(Handle(FileType.INDEX, fi.name))
            except NotFound:
                continue  # removed by a concurrent GC
            self.index.add_index_file(data, fi.name, only=present)
        missing = [fi for fi in packs if not self.index.has_pack(bytes.fromhex(fi.name))]
        for fi in missing:
            try:
                self.index.add_pack(bytes.fromhex(fi.name), self.read_pack_header(fi.name, fi.size).entries)
            except (NotFound, IntegrityError):
                continue  # check reports damaged packs; backup just won't dedup against them
        return len(missing)

    def read_pack_header(self, name: str, size: int | None = None) -> PackHeader:
        """Read only the plain header of a pack (never blob bytes): the trailer's last 8 bytes
        give the header length, then exactly the header is read. A backup credential may read
        this much of a pack and no more."""
        h = Handle(FileType.DATA, name)
        if size is None:
            size = self.backend.stat(h).size
        try:
            return read_pack_header(lambda offset, length: self.backend.load(h, offset=offset, length=length), size)
        except IntegrityError as exc:
            raise IntegrityError(f"pack {name[:12]}: {exc.message}") from exc

    # --- snapshots ----------------------------------------------------------------------

    def list_snapshots(self, damaged: list[str] | None = None) -> Iterator[tuple[str, SnapshotPlain]]:
        """Every snapshot's plain part, checked against its name. A damaged snapshot file raises
        IntegrityError naming it; given ``damaged``, it is skipped and its name appended there
        instead, so that listings and 'latest' go on with the others (as restic does)."""
        for fi in self.backend.list(FileType.SNAPSHOT):
            try:
                snap, _ = self.load_snapshot(fi.name)
            except NotFound:
                continue  # removed meanwhile
            except IntegrityError:
                if damaged is None:
                    raise
                damaged.append(fi.name)
                continue
            yield fi.name, snap

    def load_snapshot(self, name: str) -> tuple[SnapshotPlain, bytes]:
        data = self.backend.load(Handle(FileType.SNAPSHOT, name))
        if hashlib.sha256(data).hexdigest() != name:
            raise IntegrityError(f"snapshot {name[:8]} does not match its name (tampered or damaged)")
        try:
            return parse_snapshot(data), data
        except IntegrityError as exc:
            raise IntegrityError(f"snapshot {name[:8]}: {exc.message}") from exc


class WriteSession:
    """One backup run: a fresh data key, packs, index files, and finally a snapshot.

    Thread-safe ``add_blob``: callers compress and encrypt in their own threads; the pack
    buffer and uploads are serialised here. Uploads run in a small pool with a bounded number
    of packs in flight, so memory stays bounded.
    """

    def __init__(self, repo: Repository, id_key: IdKey, *, uploaders: int = 2, max_inflight: int = 2) -> None:
        self.repo = repo
        self.id_key = id_key
        self.key = DataKey.generate()
        self.envelope = repo.config.public_key.wrap(self.key)
        cfg = repo.config  # room for the blob that crosses the pack size, and the header
        self._packer = Packer(self.key, self.envelope, cfg.pack_size + cfg.chunker.max_size + 65536,
                              keep=max_inflight + 1)
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._pool = ThreadPoolExecutor(max_workers=uploaders, thread_name_prefix="upload")
        self.max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._futures: list[Future[None]] = []
        #: index-file sections (encode_index_pack: 41 bytes per blob) of packs not in an index file yet
        self._unindexed: list[bytes] = []
        #: ids of every blob the snapshot will reference (trees and contents), on disk
        self.refs = RefSet()
        self.stats = {"blobs_new": 0, "bytes_new": 0, "bytes_stored": 0, "packs": 0, "blobs_known": 0}
        self.on_upload: Callable[[int], None] | None = None

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.id_key.blob_id(data)

    def known(self, blob_id: bytes) -> bool:
        return blob_id in self.repo.index or blob_id in self._pending

    def add_blob(self, btype: BlobType, data: bytes | memoryview, blob_id: bytes | None = None, *,
                 compressible: bool = True) -> tuple[bytes, bool]:
        """Store ``data`` unless a blob with its id exists; returns (id, compressed_ok)."""
        bid = blob_id or self.blob_id(data)
        with self._lock:
            if self.known(bid):
                self.stats["blobs_known"] += 1
                return bid, True
            self._pending.add(bid)
        flag, payload = compress(data, self.repo.config.compression if compressible else 0)
        self.add_sealed([(btype, bid, seal_blob(self.key, btype, bid, flag, payload), len(data))])
        return bid, flag != 0

    # --- packs built elsewhere (the archiver's reading processes) -----------------------------

    def reader_setup(self) -> dict[str, object]:
        """What a reading process needs to cut, name and seal blobs and to build packs for this
        run (key material: only ever sent down a pipe to a child process, never written
        anywhere). ``capacity``: the size of each shared pack buffer, with room for the blob
        that crosses ``pack_size`` and for the header of ``max_blobs`` blobs, the most a
        process puts in one pack (tiny files give blobs smaller than their header entries)."""
        cfg = self.repo.config
        most = cfg.pack_size // cfg.chunker.min_size + 2
        return {"id_key": self.id_key.raw, "data_key": self.key.raw, "envelope": self.envelope,
                "chunker": cfg.chunker.to_dict(), "level": cfg.compression, "pack_size": cfg.pack_size,
                "max_blobs": most,
                "capacity": cfg.pack_size + cfg.chunker.max_size + OVERHEAD + 1 + pack_tail_size(most)}

    def claim(self, ids: list[bytes]) -> bytes:
        """One byte per id: 1 if the caller must store that blob (it is now pending), else 0."""
        out = bytearray(len(ids))
        with self._lock:
            for i, bid in enumerate(ids):
                if self.known(bid):
                    self.stats["blobs_known"] += 1
                else:
                    self._pending.add(bid)
                    out[i] = 1
        return bytes(out)

    def add_pack(self, name: str, data: memoryview, blobs: list[tuple[int, bytes, int, int]],
                 done: Callable[[], None]) -> None:
        """Store a pack built elsewhere from blobs claimed here: ``data`` is the whole pack,
        ``name`` the SHA-256 of it, ``blobs`` its (type, id, sealed length, plain length) in
        order. ``done()`` is called once the pack is stored and ``data`` no longer used."""
        entries = []
        off = 0
        for t, bid, n, _plain in blobs:
            entries.append(PackEntry(BlobType(t), bid, off, n))
            off += n
        with self._lock:
            self.stats["blobs_new"] += len(blobs)
            self.stats["bytes_new"] += sum(b[3] for b in blobs)
        # never waits for an upload slot: the caller's buffers already bound the packs in flight,
        # and its thread answers the reading processes' questions meanwhile
        self._upload(lambda: (name, data, entries), done, bounded=False)

    def add_sealed(self, blobs: list[tuple[int, bytes, bytes | bytearray | memoryview, int]]) -> None:
        """Put sealed blobs (type, id, sealed bytes, plain length) that the caller checked or
        claimed as new into the current pack."""
        full = []
        with self._lock:
            packer, limit, stats = self._packer, self.repo.config.pack_size, self.stats
            for btype, bid, sealed, plain_len in blobs:
                packer.add(BlobType(btype), bid, sealed)
                stats["blobs_new"] += 1
                stats["bytes_new"] += plain_len
                if packer.size >= limit:
                    full.append(packer.take())  # laid out and hashed by the upload thread
        for pack in full:
            self._upload_full(pack)

    def _upload_full(self, pack: FullPack) -> None:
        def done() -> None:
            with self._lock:
                self._packer.recycle(pack.buffer)
        self._upload(pack.build, done)

    def _upload(self, build: Callable[[], tuple[str, memoryview, list[PackEntry]]], done: Callable[[], None],
                bounded: bool = True) -> None:
        """Store the pack ``build()`` gives in an upload thread (if ``bounded``, at most
        ``max_inflight`` at once: this waits for a slot), then index it; ``done()`` once its
        bytes are no longer used. Every ``INDEX_EVERY_PACKS`` packs stored, the upload thread
        writes an index file for them."""
        if bounded:
            self._slots.acquire()
        try:
            self._check_failures()
        except BaseException:
            if bounded:
                self._slots.release()  # else every failed upload leaks a slot and the next caller hangs
            raise

        def work() -> None:
            try:
                name, data, entries = build()
                size = len(data)
                try:
                    self.repo.backend.save(Handle(FileType.DATA, name), cast(bytes, data))
                except AlreadyExists:
                    pass  # identical bytes (content-addressed): a harmless no-op
                finally:
                    del data  # the buffer is reused for a later pack (never resized: stale views are harmless)
                    done()  # also after a failed upload (the run fails): nobody waits for it forever
                pid = bytes.fromhex(name)
                self.repo.index.add_pack(pid, entries, commit=False)
                section = encode_index_pack(pid, entries)
                with self._lock:
                    self._pending.difference_update(e.id for e in entries)  # now in the index
                    self._unindexed.append(section)
                    self.stats["packs"] += 1
                    self.stats["bytes_stored"] += size
                    batch = self._unindexed if len(self._unindexed) >= INDEX_EVERY_PACKS else []
                    if batch:
                        self._unindexed = []
                if batch:  # packs stored (above, or by the other upload threads) before their index
                    self._index(batch)
                if self.on_upload:
                    self.on_upload(size)
            finally:
                if bounded:
                    self._slots.release()

        fut = self._pool.submit(work)
        with self._lock:  # several chunk threads upload: the list is shared
            self._futures.append(fut)

    def _check_failures(self) -> None:
        with self._lock:
            done = [f for f in self._futures if f.done()]
            if done:
                self._futures = [f for f in self._futures if not f.done()]
        for f in done:
            f.result()  # re-raise an upload error in the backup thread

    def flush(self) -> None:
        """Upload the last partial pack, wait for every upload, write the index file."""
        with self._lock:
            full = self._packer.take() if len(self._packer) else None
        if full:
            self._upload_full(full)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        with self._lock:
            batch, self._unindexed = self._unindexed, []
        if batch:
            self._index(batch)
        self.repo.index.commit()

    def _index(self, sections: list[bytes]) -> None:
        """Commit the packs indexed in the cache so far, then write an index file of ``sections``."""
        self.repo.index.commit()
        self._write_index(sections)

    def _write_index(self, sections: list[bytes]) -> None:
        data = join_index(sections)
        name = hashlib.sha256(data).hexdigest()
        try:
            self.repo.backend.save(Handle(FileType.INDEX, name), data)
        except AlreadyExists:
            pass
        self.repo.index.note_index_file(name)  # its packs are indexed already: never download it

    def commit(self, plain: dict[str, object], refs: Iterable[bytes], meta: dict[str, object]) -> str:
        """Write the snapshot (after ``flush``); returns its name."""
        data = encode_snapshot_prefix(plain, refs, self.envelope)  # grows in place: no copies
        data += self.key.seal(json.dumps(meta, sort_keys=True).encode(), data)
        name = hashlib.sha256(data).hexdigest()
        # every backend takes a bytes-like object (local writes it, remote ones copy it once)
        self.repo.backend.save(Handle(FileType.SNAPSHOT, name), cast(bytes, data))
        return name

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        # also after a failed run: the packs indexed so far are stored, and an open transaction
        # would keep the cache locked for the next run of a long-lived agent
        self.repo.index.commit()
        self.refs.close()

"""The parts of a reading process (``worker_main``) that hold no loop: its packs, built in the
parent's shared buffers; compressing and sealing a block of chunks, and that state along one
file; opening a group of files ahead; and the check that a file did not change while it was
read."""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator

from rempart.crypto.aead import DataKey
from rempart.repository.blobs import compress, seal_blob_into
from rempart.repository.format import BlobType
from rempart.repository.packer import FullPack
from rempart.snapshot.pipeline import collect_samples
from rempart.snapshot.wire import PACK, PBLOB, Request, send

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
Read = tuple[bytes, int, os.stat_result, list[tuple[int, bytes]]]  # ids, size, stat, samples


class Packs:
    """The process's packs, built in the parent's shared buffers (see ``worker_main``)."""

    def __init__(self, out: int, key: DataKey, envelope: bytes, fds: list[int], capacity: int, limit: int,
                 max_blobs: int, wait: Callable[[], None]) -> None:
        self.out, self.key, self.envelope, self.limit, self.wait = out, key, envelope, limit, wait
        self.max_blobs = max_blobs  # the buffer has room for this many header entries
        self.maps = []
        for fd in fds:
            self.maps.append(mmap.mmap(fd, capacity))
            os.close(fd)  # the mapping keeps the memory
        self.views = [memoryview(m) for m in self.maps]
        self.free: list[int] = []  # buffers the parent gave this process (``D``)
        self.current = -1
        self.pos = 0
        self.blobs: list[tuple[int, bytes, int, int]] = []

    def add(self, bid: bytes, plain_len: int, flag: int, payload: bytes | memoryview) -> None:
        if self.current < 0:
            while not self.free:
                self.wait()  # reads messages until the parent gives a buffer back
            self.current = self.free.pop()
        n = seal_blob_into(self.key, BlobType.DATA, bid, flag, payload, self.views[self.current][self.pos :])
        self.pos += n
        self.blobs.append((BlobType.DATA, bid, n, plain_len))
        if self.pos >= self.limit or len(self.blobs) >= self.max_blobs:
            self.finish()

    def finish(self) -> None:
        """Write the header of the current pack and hand it to the parent."""
        if self.current < 0:
            return
        buf = self.maps[self.current]
        name, data, _ = FullPack(self.key, self.envelope, buf, self.pos, [b[:3] for b in self.blobs]).build()
        if data.obj is not buf:
            raise RuntimeError("pack header did not fit its shared buffer")
        n = len(data)
        data.release()
        send(self.out, b"P", PACK.pack(self.current, n, bytes.fromhex(name)),
             b"".join(PBLOB.pack(*b) for b in self.blobs))
        self.current, self.pos, self.blobs = -1, 0, []


class SealState:
    """Compress-and-seal state along one file: stop trying to compress data that does not
    compress (JPEG, DICOM pixels), but try again every 16 chunks (``chunks`` counts those
    compressed or found stored, in the order that was done)."""

    __slots__ = ("chunks", "compressible", "content", "misses", "offset", "plan", "samples")

    def __init__(self, plan: list[tuple[int, int]]) -> None:
        self.plan = plan
        self.samples: list[tuple[int, bytes]] = []
        self.content: list[bytes] = []
        self.offset = self.misses = self.chunks = 0
        self.compressible = True

    def tried(self, ok: bool) -> None:
        """One more chunk compressed (``ok``: it shrank) or found stored (counts as ok)."""
        self.misses = 0 if ok else self.misses + 1
        self.chunks += 1
        self.compressible = self.misses < 2 or self.chunks % 16 == 0


def compress_block(state: SealState, chunks: list[memoryview], level: int) -> list[tuple[int, bytes | memoryview]]:
    """Every chunk of a block compressed (or passed as is while the file does not compress)."""
    out = []
    for c in chunks:
        flag, payload = compress(c, level if state.compressible else 0)
        out.append((flag, payload))
        state.tried(flag != 0)
    return out


def seal_block(packs: Packs, state: SealState, chunks: list[memoryview], ids: list[bytes],
               compressed: list[tuple[int, bytes | memoryview]] | None, new: bytes | memoryview, level: int) -> None:
    """Store the chunks of a block the parent said are new (every one of them: it counts on
    it), compressed already (``compressed``, from :func:`compress_block`) or now; sample them
    for detection and note their ids in the file's content."""
    for k, (c, bid, is_new) in enumerate(zip(chunks, ids, new, strict=True)):
        if state.plan:
            collect_samples(state.plan, state.samples, state.offset, c)
        if compressed is not None:
            if is_new:
                flag, payload = compressed[k]
                packs.add(bid, len(c), flag, payload)
        else:
            ok = True
            if is_new:
                flag, payload = compress(c, level if state.compressible else 0)
                packs.add(bid, len(c), flag, payload)
                ok = flag != 0
            state.tried(ok)
        state.content.append(bid)
        state.offset += len(c)


def open_ahead(group: list[Request], failed: Callable[[Request, Exception], None]) -> Iterator[tuple[Request, int]]:
    """Open every file of ``group`` and ask the kernel to start reading them (on a cold cache
    the disk then works on the next files while one is chunked), then yield them one by one;
    a file that cannot be opened is reported through ``failed``. Unyielded ones are closed."""
    opened: deque[tuple[Request, int]] = deque()
    try:
        for r in group:
            try:
                fd = os.open(r.path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
            except OSError as exc:
                failed(r, exc)
                continue
            opened.append((r, fd))
            if WILLNEED is not None and len(group) > 1:
                try:
                    os.posix_fadvise(fd, 0, 0, WILLNEED)
                except OSError:
                    pass  # only a hint
        while opened:
            yield opened.popleft()  # the caller owns (closes) it from here
    finally:
        for _, fd in opened:
            os.close(fd)


def settled(state: SealState, st1: os.stat_result, st2: os.stat_result) -> Read | None:
    """The file's read, or None if it changed while being read."""
    if state.offset != st2.st_size or (st1.st_mtime_ns, st1.st_size) != (st2.st_mtime_ns, st2.st_size):
        return None
    return b"".join(state.content), state.offset, st2, state.samples

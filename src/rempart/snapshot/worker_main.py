"""A reading process of the archiver (``python -m rempart.snapshot.worker_main``).

Python threads share one interpreter lock: chunking, hashing, compressing and encrypting all
release it, but the Python code around them does not, so threads kept only ~1.4 of 2 cores busy
(docs/benchmarks.md). Reading processes each read whole files, chunk, hash and, for the chunks
the parent says are new, compress and seal them; the parent process keeps everything that is
shared (walk, dedup decisions, packs, uploads, index, state cache, trees, detection verdicts).

New blobs go straight into packs the process builds itself, in buffers of shared memory the
parent created (one per process and a spare, mapped by all): when one is full, the process
writes the pack's header, hashes it and tells the parent, which stores it from the same memory
(no copy of blob bytes through the pipe, no hashing in the parent). The parent gives each
process a buffer at the start and another for each pack it hands over: the spare, or the buffer
of the next pack stored.

Wire protocol, over the child's stdin (parent → child) and a private copy of its stdout
(child → parent; fd 1 itself is pointed at stderr so a stray print cannot corrupt the stream).
Every message is ``u32 length || 1 kind byte || payload``:

- child → parent first: ``H`` once it has imported what it needs and taken the run's keys.
- parent → child: ``K`` run keys and parameters (JSON, with the file descriptors of the shared
  buffers), ``R`` read a file (``encode_request``: request id, retries, path, sample plan),
  ``A`` the answer to the last ``Q`` (one byte per id: 1 = new, store it; 0 = already stored or
  claimed), ``D`` a buffer this process may fill (u32 index), ``S`` stop: the process sends its last,
  partly filled pack, then ``Z``, and exits.
- child → parent: ``Q`` the ids of one block's chunks (32 bytes each; the parent claims the new
  ones), ``P`` a pack is ready (``PACK``: buffer index, length, SHA-256; then per blob
  ``PBLOB``: type, id, sealed length, plain length), then one of ``F`` file read
  (``encode_result``), ``C`` changed while read (request id), ``E`` an OS error and ``X`` a
  failure that must stop the backup (request id, then the message in UTF-8); ``Z`` last.

A process that ends without ``Z`` may have taken blobs it never stored: the parent then fails
the backup, whatever files were outstanding.
"""

from __future__ import annotations

import importlib
import json
import mmap
import os
import signal
import stat as statmod
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from rempart.chunking.fastcdc import Chunker, ChunkerParams
from rempart.crypto.aead import DataKey
from rempart.crypto.idkey import IdKey
from rempart.repository.blobs import compress, seal_blob_into
from rempart.repository.format import BlobType
from rempart.repository.packer import FullPack
from rempart.snapshot.pipeline import collect_samples
from rempart.snapshot.tree import canonical_json

HEADER = struct.Struct("<IB")
PACK = struct.Struct("<II32s")  # buffer index, pack length, SHA-256 of the pack
PBLOB = struct.Struct("<B32sII")  # type, id, sealed length, plain length
REQ = struct.Struct("<QII")  # request id, retries, path length; then path, then plan pairs
PAIR = struct.Struct("<QI")  # offset, length (plan ranges and samples)
RESULT = struct.Struct("<QQqqQII")  # request, size, mtime, ctime, inode, mode, number of ids
ID = struct.Struct("<Q")
ID32 = struct.Struct("<I")
FEATURES = 2**64 - 1  # in place of a sample's offset: the file's features, as canonical JSON

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


def send(fd: int, kind: bytes, *parts: bytes | bytearray | memoryview) -> None:
    """Write one message (header and parts, without joining them)."""
    bufs: list[Any] = [HEADER.pack(sum(len(p) for p in parts), kind[0]), *parts]
    if not hasattr(os, "writev"):  # Windows
        data = memoryview(b"".join(bufs))
        while data:
            data = data[os.write(fd, data):]
        return
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = memoryview(bufs[0])[n:]


def encode_request(req: int, path: str, plan: list[tuple[int, int]], retries: int) -> bytes:
    raw = os.fsencode(path)
    return b"".join([REQ.pack(req, retries, len(raw)), raw, *(PAIR.pack(o, n) for o, n in plan)])


def decode_request(b: bytes) -> tuple[int, str, list[tuple[int, int]], int]:
    req, retries, n = REQ.unpack_from(b)
    pos = REQ.size + n
    plan = [PAIR.unpack_from(b, i) for i in range(pos, len(b), PAIR.size)]
    return req, os.fsdecode(b[REQ.size : pos]), plan, retries


def encode_result(req: int, content: bytes, size: int, st: os.stat_result,
                  samples: list[tuple[int, bytes]]) -> list[bytes]:
    parts = [RESULT.pack(req, size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, len(content) // 32),
             content]
    for off, data in samples:
        parts += (PAIR.pack(off, len(data)), data)
    return parts


def decode_result(b: bytes) -> tuple[int, list[bytes], int, int, int, int, int, list[tuple[int, bytes]]]:
    req, size, mtime, ctime, ino, mode, nids = RESULT.unpack_from(b)
    pos = RESULT.size
    ids = [b[i : i + 32] for i in range(pos, pos + 32 * nids, 32)]
    pos += 32 * nids
    samples = []
    while pos < len(b):
        off, n = PAIR.unpack_from(b, pos)
        pos += PAIR.size
        samples.append((off, b[pos : pos + n]))
        pos += n
    return req, ids, size, mtime, ctime, ino, mode, samples


def recv(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """Read one message: (kind, payload), or None at end of stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    n, kind = HEADER.unpack(head)
    payload = stream.read(n) if n else b""
    if len(payload) < n:
        return None
    return bytes([kind]), payload


class _Packs:
    """The process's packs, built in the parent's shared buffers (see the module docstring)."""

    def __init__(self, out: int, key: DataKey, envelope: bytes, fds: list[int], capacity: int, limit: int,
                 wait: Callable[[], None]) -> None:
        self.out, self.key, self.envelope, self.limit, self.wait = out, key, envelope, limit, wait
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
        if self.pos >= self.limit:
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


class _Worker:
    def __init__(self, inp: IO[bytes], out: int) -> None:
        self.inp, self.out = inp, out
        self.queued: deque[tuple[bytes, bytes]] = deque()  # requests that arrived while waiting
        self.run: dict[str, Any] | None = None
        self.packs: _Packs | None = None

    def serve(self) -> None:
        while True:
            msg = self.queued.popleft() if self.queued else self._next()
            if msg is None:
                return  # the parent went away: no Z, it knows the run is lost
            kind, payload = msg
            if kind == b"S":
                if self.packs is not None:
                    self.packs.finish()
                send(self.out, b"Z")
                return
            if kind == b"K":
                self._setup(json.loads(payload))
                send(self.out, b"H")  # ready: the parent waits for this before handing out files
            elif kind == b"R":
                self._request(*decode_request(payload))

    def _next(self) -> tuple[bytes, bytes] | None:
        """The next message that is not a returned buffer (those are taken here, at once)."""
        while True:
            msg = recv(self.inp)
            if msg is None or msg[0] != b"D":
                return msg
            if self.packs is not None:
                self.packs.free.append(ID32.unpack(msg[1])[0])

    def _wait_buffer(self) -> None:
        """Read one message: a returned buffer is taken, anything else served later."""
        msg = recv(self.inp)
        if msg is None:
            raise EOFError("the backup process went away")
        if msg[0] == b"D" and self.packs is not None:
            self.packs.free.append(ID32.unpack(msg[1])[0])
        else:
            self.queued.append(msg)

    def _setup(self, p: dict[str, Any]) -> None:
        idk = IdKey(bytes.fromhex(p["id_key"]))
        key = DataKey(bytes.fromhex(p["data_key"]))
        features = None
        if p.get("features"):  # "module:function", given by the layer above (detection)
            module, _, func = p["features"].partition(":")
            features = getattr(importlib.import_module(module), func)
        self.packs = _Packs(self.out, key, bytes.fromhex(p["envelope"]), p["buffers"], p["capacity"],
                            p["pack_size"], self._wait_buffer)
        self.run = {"id": idk, "level": p["level"], "features": features,
                    "chunker": Chunker(ChunkerParams.from_dict(p["chunker"]), idk.chunker_seed())}

    def _ask(self, ids: list[bytes]) -> bytes:
        send(self.out, b"Q", b"".join(ids))
        while True:
            msg = self._next()
            if msg is None:
                raise EOFError("the backup process went away")
            if msg[0] == b"A":
                return msg[1]
            self.queued.append(msg)  # a read request sent meanwhile: served next

    def _request(self, req: int, path: str, plan: list[tuple[int, int]], retries: int) -> None:
        try:
            for _attempt in range(retries + 1):
                result = self._read_once(path, plan)
                if result is not None:
                    content, size, st, samples = result
                    fn = self.run["features"] if self.run else None
                    if fn is not None:  # computed here: the parent gets the features, not the samples
                        feats = fn(os.path.basename(path), size, samples)
                        samples = [(FEATURES, canonical_json(feats).encode() if feats else b"")]
                    send(self.out, b"F", *encode_result(req, content, size, st, samples))
                    return
            send(self.out, b"C", ID.pack(req))
        except OSError as exc:
            send(self.out, b"E", ID.pack(req), str(exc.strerror or exc).encode("utf-8", "replace"))
        except EOFError:
            raise
        except Exception as exc:  # reported to the parent, which stops the backup
            send(self.out, b"X", ID.pack(req), f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))

    def _read_once(self, path: str, plan: list[tuple[int, int]]
                   ) -> tuple[bytes, int, os.stat_result, list[tuple[int, bytes]]] | None:
        run, packs = self.run, self.packs
        if run is None or packs is None:
            raise RuntimeError("read request before the run's keys")
        idk, level = run["id"], run["level"]
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st1 = os.fstat(fd)
            if not statmod.S_ISREG(st1.st_mode):
                raise OSError(0, "no longer a regular file")
            samples: list[tuple[int, bytes]] = []
            content: list[bytes] = []
            offset = 0
            misses = 0
            compressible = True
            for batch in run["chunker"].batches(f):
                ids = [idk.blob_id(c) for c in batch]
                new = self._ask(ids)
                for c, bid, is_new in zip(batch, ids, new, strict=True):
                    if plan:
                        collect_samples(plan, samples, offset, c)
                    ok = True
                    if is_new:
                        flag, payload = compress(c, level if compressible else 0)
                        packs.add(bid, len(c), flag, payload)
                        ok = flag != 0
                    # stop trying to compress data that does not compress (JPEG, DICOM pixels)
                    misses = 0 if ok else misses + 1
                    compressible = misses < 2 or len(content) % 16 == 0
                    content.append(bid)
                    offset += len(c)
            st2 = os.fstat(fd)
        if offset != st2.st_size or (st1.st_mtime_ns, st1.st_size) != (st2.st_mtime_ns, st2.st_size):
            return None
        return b"".join(content), offset, st2, samples


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipes
    out = os.dup(1)
    os.dup2(2, 1)  # print() in this process goes to stderr, never into the message stream
    sys.stdout = sys.stderr
    try:
        _Worker(sys.stdin.buffer, out).serve()
    except (EOFError, BrokenPipeError):
        pass  # the parent stopped (or was killed): nothing to clean up
    return 0


if __name__ == "__main__":
    sys.exit(main())

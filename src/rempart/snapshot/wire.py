"""The pipe protocol between the archiver and its reading processes (``worker_main``); the
framing (``send``, ``recv``, ``HEADER``) is also the restore processes' (``restore_child``).

Wire protocol, over the child's stdin (parent → child) and a private copy of its stdout
(child → parent; fd 1 itself is pointed at stderr so a stray print cannot corrupt the stream).
Every message is ``u32 length || 1 kind byte || payload``:

- child → parent first: ``H`` once it has imported what it needs and taken the run's keys.
- parent → child: ``K`` run keys and parameters (JSON, with the file descriptors of the shared
  buffers), ``R`` read a file (``encode_request``: request id, retries, size at the walk, path, sample
  plan),
  ``A`` the answer to the last ``Q`` (one byte per id: 1 = new, store it; 0 = already stored or
  claimed), ``D`` a buffer this process may fill (u32 index), ``S`` stop: the process sends its last,
  partly filled pack, then ``Z``, and exits.
- child → parent: ``Q`` the ids of one block's chunks, or of a group of small files (32 bytes
  each; the parent claims the new ones), ``P`` a pack is ready (``PACK``: buffer index, length, SHA-256; then per blob
  ``PBLOB``: type, id, sealed length, plain length), then one of ``F`` file read
  (``encode_result``; with a detection function its samples are two pseudo-samples instead:
  ``FEATURES``, the features as canonical JSON, then ``JUDGED``, the file's verdict were it
  new, a tuple in ``marshal`` format: both ends are the same program), ``C`` changed while read (request id), ``E`` an OS error and ``X`` a
  failure that must stop the backup (request id, then the message in UTF-8); ``Z`` last.

A process that ends without ``Z`` may have taken blobs it never stored: the parent then fails
the backup, whatever files were outstanding.
"""

from __future__ import annotations

import os
import select
import struct
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

HEADER = struct.Struct("<IB")
PACK = struct.Struct("<II32s")  # buffer index, pack length, SHA-256 of the pack
PBLOB = struct.Struct("<B32sII")  # type, id, sealed length, plain length
REQ = struct.Struct("<QIQI")  # request id, retries, size, path length; then path, then plan pairs
PAIR = struct.Struct("<QI")  # offset, length (plan ranges and samples)
RESULT = struct.Struct("<QQqqQII")  # request, size, mtime, ctime, inode, mode, number of ids
ID = struct.Struct("<Q")
ID32 = struct.Struct("<I")
FEATURES = 2**64 - 1  # in place of a sample's offset: the file's features, as canonical JSON
JUDGED = 2**64 - 2  # the same: the observer's judgement of the file as a new file (marshal)


class Request(NamedTuple):
    req: int
    path: str
    size: int  # at the walk: the file may have changed since
    plan: list[tuple[int, int]]
    retries: int


@dataclass(frozen=True)
class ReadOutcome:
    """What became of one file handed to a reading process (or read in a thread)."""

    kind: str  # "ok", "changed", "oserror" or "failed"
    content: list[bytes] | None = None
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    mode: int = 0
    samples: list[tuple[int, bytes]] | None = None
    message: str = ""
    error: BaseException | None = None  # "failed" because the parent could not take a blob
    features_raw: str | None = None  # computed by the reading process (then no samples)
    judged_raw: bytes | None = None  # with them: the observer's verdict were the file new (marshal)


def send(fd: int, kind: bytes, *parts: bytes | bytearray | memoryview) -> None:
    """Write one message (header and parts, without joining them)."""
    bufs: list[Any] = [HEADER.pack(sum(len(p) for p in parts), kind[0]), *parts]
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = memoryview(bufs[0])[n:]


def recv(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """Read one message from a buffered stream: (kind, payload), or None at its end."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    n, kind = HEADER.unpack(head)
    payload = stream.read(n) if n else b""
    if len(payload) < n:
        return None
    return bytes([kind]), payload


def encode_request(r: Request) -> bytes:
    raw = os.fsencode(r.path)
    return b"".join([REQ.pack(r.req, r.retries, r.size, len(raw)), raw, *(PAIR.pack(o, n) for o, n in r.plan)])


def decode_request(b: bytes) -> Request:
    req, retries, size, n = REQ.unpack_from(b)
    pos = REQ.size + n
    plan = [PAIR.unpack_from(b, i) for i in range(pos, len(b), PAIR.size)]
    return Request(req, os.fsdecode(b[REQ.size : pos]), size, plan, retries)


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


class Inbox:
    """Messages from a pipe, with a look that does not wait (to gather small files)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def _parse(self) -> tuple[bytes, bytes] | None:
        if len(self.buf) < HEADER.size:
            return None
        n, kind = HEADER.unpack_from(self.buf)
        end = HEADER.size + n
        if len(self.buf) < end:
            return None
        payload = bytes(self.buf[HEADER.size : end])
        del self.buf[:end]
        return bytes([kind]), payload

    def get(self, wait: bool = True) -> tuple[bytes, bytes] | None:
        """The next message (kind, payload); None at the end of the stream, or when ``wait`` is
        false and no whole message has arrived yet."""
        while True:
            msg = self._parse()
            if msg is not None or self.eof:
                return msg
            if not wait and not select.select([self.fd], [], [], 0)[0]:
                return None
            data = os.read(self.fd, 1 << 16)
            if not data:
                self.eof = True
                return None
            self.buf += data

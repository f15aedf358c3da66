"""A restore process (``python -m rempart.snapshot.restore_child``): reads, decrypts,
decompresses and writes the files of the jobs its parent hands it.

Why processes: in threads, every call that releases the interpreter lock (AES-GCM, zstd, the
file system calls) must take it back, and the Python around them (per blob, per file) holds it,
so threads kept only part of two cores busy. The parent keeps what is shared (walking the
trees, folders and symlinks, index lookups, unwrapping each pack's data key with the recovery
key); a child gets only the data keys of the packs it reads, over its pipe, never the recovery
key, and writes files relative to the target's directory descriptor, inherited from the parent.

Wire protocol (framed as ``worker_main``'s, with ``snapshot.wire``): every message is ``u32 length || 1 kind byte ||
payload``, parent → child on the child's stdin, child → parent on a private copy of its stdout
(fd 1 is pointed at stderr so a stray print cannot corrupt the stream).

- parent → child: ``K`` setup (``u32`` target directory descriptor), ``P`` a pack (32-byte id,
  32-byte data key, then the pack file's path in UTF-8), ``J`` a job (``marshal`` of
  ``(job, runs, files)``: runs ``(pack id, start, end)`` are byte ranges of pack files to read in
  order, files ``(path, size, mode, mtime_ns, blobs)`` with blobs ``(run, offset in the run,
  length, type, id)``, run -1 for a blob missing from the index), ``S`` stop.
- child → parent: ``H`` once set up, ``D`` a job done (``u64`` job, files, bytes), ``E`` a job
  failed (``u64`` job, one byte ``I``/``U``/``H``/``O`` for an integrity, user, hostile path or
  OS error, then the message in UTF-8: it names the file, never a key).
"""

from __future__ import annotations

import marshal
import os
import signal
import struct
import sys
from collections.abc import Iterator
from typing import IO, Any, cast

from rempart.core.errors import DecryptionError, HostilePathError, IntegrityError, UserError
from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType
from rempart.repository.reader import open_view
from rempart.snapshot.restore_write import O_BINARY, O_CLOEXEC, write_file
from rempart.snapshot.wire import recv, send

DONE = struct.Struct("<QQQ")
JOB = struct.Struct("<Q")
FD = struct.Struct("<I")
MAX_OPEN_PACKS = 32

Run = tuple[bytes, int, int]
FileJob = tuple[str, int, int, int, list[tuple[int, int, int, int, bytes]]]


def error_tag(exc: BaseException) -> bytes:
    if isinstance(exc, HostilePathError):
        return b"H"
    if isinstance(exc, UserError):
        return b"U"
    if isinstance(exc, (IntegrityError, DecryptionError)):
        return b"I"
    return b"O"


class _Child:
    def __init__(self, inp: IO[bytes], out: int) -> None:
        self.inp, self.out = inp, out
        self.root_fd = -1
        self.keys: dict[bytes, DataKey] = {}
        self.paths: dict[bytes, str] = {}
        self.fds: dict[bytes, int] = {}  # open pack files, oldest first
        self.buf = bytearray(1 << 20)  # sealed bytes of the current run (reused)

    def serve(self) -> None:
        try:
            while True:
                msg = recv(self.inp)
                if msg is None or msg[0] == b"S":
                    return
                kind, payload = msg
                if kind == b"J":
                    self._job(*marshal.loads(payload))  # noqa: S302 - from the parent, over its own pipe
                elif kind == b"P":
                    self.keys[payload[:32]] = DataKey(payload[32:64])
                    self.paths[payload[:32]] = payload[64:].decode()
                elif kind == b"K":
                    self.root_fd = FD.unpack(payload)[0]
                    send(self.out, b"H")
        finally:
            for fd in self.fds.values():
                os.close(fd)

    def _job(self, job: int, runs: list[Run], files: list[FileJob]) -> None:
        stream = self._blobs(runs, [b for f in files for b in f[4]])
        size = 0
        try:
            for rel, fsize, mode, mtime_ns, blobs in files:
                write_file(self.root_fd, rel, fsize, mode, mtime_ns, len(blobs), stream)
                size += fsize
        except Exception as exc:  # reported to the parent, which raises it
            send(self.out, b"E", JOB.pack(job), error_tag(exc), str(exc).encode("utf-8", "replace"))
            return
        send(self.out, b"D", DONE.pack(job, len(files), size))

    def _blobs(self, runs: list[Run], blobs: list[tuple[int, int, int, int, bytes]]
               ) -> Iterator[bytes | memoryview]:
        """The plaintexts of ``blobs`` in order; runs are read as the blobs reach them (their
        indexes only grow), a repeated blob is decoded once."""
        current = -1
        view = memoryview(self.buf)
        last: tuple[int, int] = (-1, -1)
        out: bytes | memoryview = b""
        for run, offset, length, btype, blob_id in blobs:
            if run < 0:
                raise IntegrityError(f"blob {blob_id.hex()[:12]} is missing from the repository")
            if run != current:
                view = self._read(*runs[run])
                current = run
            if (run, offset) != last:
                key = self.keys[runs[run][0]]
                # the type's value as is (an IntEnum lookup per blob costs more than the AAD)
                out = open_view(key, cast(BlobType, btype), blob_id, view[offset : offset + length])
                last = (run, offset)
            yield out

    def _read(self, pack: bytes, start: int, end: int) -> memoryview:
        """Bytes ``start..end`` of ``pack`` into the reused buffer."""
        n = end - start
        if n > len(self.buf):
            self.buf = bytearray(n)
        view = memoryview(self.buf)[:n]
        fd = self._pack_fd(pack)
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], start + got)
            if not k:
                break
            got += k
        if got < n:
            raise IntegrityError(f"pack {pack.hex()[:12]}: short read ({got} of {n} bytes)")
        return view

    def _pack_fd(self, pack: bytes) -> int:
        fd = self.fds.get(pack)
        if fd is None:
            if len(self.fds) >= MAX_OPEN_PACKS:
                os.close(self.fds.pop(next(iter(self.fds))))
            try:
                fd = os.open(self.paths[pack], os.O_RDONLY | O_BINARY | O_CLOEXEC)
            except FileNotFoundError as exc:
                raise IntegrityError(f"pack {pack.hex()[:12]} is missing from the repository") from exc
            self.fds[pack] = fd
        return fd


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipes
    out = os.dup(1)
    os.dup2(2, 1)  # print() in this process goes to stderr, never into the message stream
    sys.stdout = sys.stderr
    child: Any = _Child(sys.stdin.buffer, out)
    try:
        child.serve()
    except (EOFError, BrokenPipeError):
        pass  # the parent stopped (or was killed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A restore process (``python -m rempart.snapshot.restore_child``): reads, decrypts,
decompresses and writes the files of the jobs its parent hands it.

Why processes: in threads, every call that releases the interpreter lock (AES-GCM, zstd, the
file system calls) must take it back, and the Python around them (per blob, per file) holds it,
so threads kept only part of two cores busy. The parent keeps what is shared (walking the
trees, folders and symlinks, index lookups, unwrapping each pack's data key with the recovery
key); a child gets only the data keys of the packs it reads, over its pipe, never the recovery
key, and writes files relative to the target's directory descriptor, inherited from the parent.

Where the packs are: in a local folder, the process opens the pack files itself (the parent
sends their paths). In a vault, it opens its own keep-alive TLS connections to the vault (built
from the settings the parent sends down the pipe: URL, token, the pinned certificate, retry
parameters; never on the command line or in the environment) and fetches its jobs' byte ranges
itself, with the same retries and backoff as the parent's backend. A thread fetches runs ahead,
across jobs, within a byte budget, while the main thread decrypts and writes; once a fetch has
failed after its retries, every later job of this process fails at once with that error (the
restore fails anyway: it does not wait for the retries of every queued job).

Wire protocol (framed as ``worker_main``'s, with ``snapshot.wire``): every message is ``u32 length || 1 kind byte ||
payload``, parent → child on the child's stdin, child → parent on a private copy of its stdout
(fd 1 is pointed at stderr so a stray print cannot corrupt the stream).

- parent → child: ``K`` setup (``u32`` target directory descriptor, then ``marshal`` of a dict:
  ``{}`` for a local folder, ``{"vault": VaultBackend.settings(), "retry": (attempts, base delay,
  max delay)}`` for a vault), ``P`` a pack (32-byte id, 32-byte data key, then the pack file's
  path in UTF-8, empty for a vault), ``J`` a job (``marshal`` of
  ``(job, runs, files)``: runs ``(pack id, start, end)`` are byte ranges of pack files to read in
  order, files ``(path, size, mode, mtime_ns, blobs)`` with blobs ``(run, offset in the run,
  length, type, id)``, run -1 for a blob missing from the index), ``S`` stop.
- child → parent: ``H`` once set up, ``D`` a job done (``u64`` job, files, bytes), ``E`` a job
  failed (``u64`` job, the name of the error's class in ``rempart.core.errors`` or ``OSError``,
  a NUL byte, then the message in UTF-8: it names the file, never a key or the token).
"""

from __future__ import annotations

import marshal
import os
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO, Any, cast

from rempart.core import errors
from rempart.core.errors import DecryptionError, IntegrityError, RempartError, local_error
from rempart.crypto.aead import DataKey
from rempart.repository.format import BlobType
from rempart.repository.reader import open_view
from rempart.snapshot.restore_write import O_BINARY, O_CLOEXEC, write_file
from rempart.snapshot.wire import recv, send

DONE = struct.Struct("<QQQ")
JOB = struct.Struct("<Q")
FD = struct.Struct("<I")
MAX_OPEN_PACKS = 32
#: sealed bytes a remote process fetches ahead of the one it decrypts and writes
FETCH_AHEAD = 12 * 1024 * 1024

Run = tuple[bytes, int, int]
FileJob = tuple[str, int, int, int, list[tuple[int, int, int, int, bytes]]]


def error_name(exc: BaseException) -> bytes:
    """The class the parent raises for ``exc``: its own when it is one of rempart's errors."""
    if isinstance(exc, DecryptionError):
        return b"IntegrityError"
    if isinstance(exc, RempartError) and getattr(errors, type(exc).__name__, None) is type(exc):
        return type(exc).__name__.encode()
    return b"OSError"


class _Child:
    """Reads runs of pack files in a local folder, one after the other, into a reused buffer."""

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
                self.take(*msg)
        finally:
            self.close()

    def take(self, kind: bytes, payload: bytes) -> None:
        if kind == b"J":
            self.job(*marshal.loads(payload))  # noqa: S302 - from the parent, over its own pipe
        elif kind == b"P":
            self.pack(payload)
        elif kind == b"K":
            self.root_fd = FD.unpack_from(payload)[0]
            send(self.out, b"H")

    def pack(self, payload: bytes) -> None:
        self.keys[payload[:32]] = DataKey(payload[32:64])
        self.paths[payload[:32]] = payload[64:].decode()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def job(self, job: int, runs: list[Run], files: list[FileJob]) -> None:
        stream = self._blobs(runs, [b for f in files for b in f[4]])
        size = 0
        rel = files[0][0] if files else ""
        try:
            for rel, fsize, mode, mtime_ns, blobs in files:
                write_file(self.root_fd, rel, fsize, mode, mtime_ns, len(blobs), stream)
                size += fsize
        except Exception as exc:  # reported to the parent, which raises it
            if isinstance(exc, OSError):  # the target's disk is full, a folder is read-only...
                exc = local_error(f"{rel}: cannot restore", exc)
            msg = str(exc)
            if not msg.startswith(f"{rel}: "):
                msg = f"{rel}: cannot restore: {msg}"
            send(self.out, b"E", JOB.pack(job), error_name(exc), b"\0", msg.encode("utf-8", "replace"))
            return
        finally:
            self.done_with(runs)
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
                view = self.read(runs, run)
                current = run
            if (run, offset) != last:
                key = self.keys[runs[run][0]]
                # the type's value as is (an IntEnum lookup per blob costs more than the AAD)
                out = open_view(key, cast(BlobType, btype), blob_id, view[offset : offset + length])
                last = (run, offset)
            yield out

    def done_with(self, runs: list[Run]) -> None:
        """The job of ``runs`` is over (its buffers may go)."""

    def read(self, runs: list[Run], i: int) -> memoryview:
        """Bytes ``start..end`` of run ``i``'s pack into the reused buffer."""
        pack, start, end = runs[i]
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


#: a fetched run's buffer is at least this long (reused for later runs of other lengths)
BUF_STEP = 1 << 20


class _Slot:
    """One run of a job, fetched by the fetching thread."""

    __slots__ = ("buf", "data", "error", "ready", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: bytearray | None = None  # the pooled buffer ``data`` is a view of
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()


class _RemoteChild(_Child):
    """Fetches its jobs' runs from a vault over its own connections: a thread reads the pipe
    and hands each job's runs to a fetching thread (in order, at most ``FETCH_AHEAD`` bytes
    ahead); the main thread decrypts and writes as the runs arrive."""

    def __init__(self, inp: IO[bytes], out: int, settings: dict[str, Any]) -> None:
        super().__init__(inp, out)
        from rempart.storage.base import FileType, Handle
        from rempart.storage.vaultclient import VaultBackend
        from rempart.storage.wrappers import RetryBackend

        attempts, base_delay, max_delay = settings["retry"]
        self.vault = VaultBackend.from_settings(settings["vault"])
        self.backend = RetryBackend(self.vault, attempts=attempts, base_delay=base_delay, max_delay=max_delay)
        #: buffers of runs already written, reused for the next fetches (a fresh ``bytes`` per
        #: run of up to 4 MiB cost page faults and zeroed pages every time); with the runs in
        #: flight they stay within FETCH_AHEAD bytes
        self._free: list[bytearray] = []
        self._handle = lambda pack: Handle(FileType.DATA, pack.hex())
        self._cond = threading.Condition()
        self._held = 0  # bytes fetched (or being fetched) and not yet written
        self._fetch_q: deque[tuple[list[Run], list[_Slot]] | None] = deque()
        self._work_q: deque[tuple[bytes, bytes] | None] = deque()
        self._slots: dict[int, list[_Slot]] = {}  # id(runs) -> its slots, for the job in hand
        self._broken: BaseException | None = None  # a fetch failed after its retries

    def serve(self) -> None:
        threading.Thread(target=self._pipe, name="pipe", daemon=True).start()
        threading.Thread(target=self._fetch, name="fetch", daemon=True).start()
        try:
            while True:
                with self._cond:
                    while not self._work_q:
                        self._cond.wait()
                    msg = self._work_q.popleft()
                if msg is None:
                    return
                self.take(*msg)
        finally:
            self.backend.close()

    def _pipe(self) -> None:
        """Reads the parent's messages; a job's runs start being fetched as soon as it arrives."""
        try:
            while True:
                msg = recv(self.inp)
                if msg is None or msg[0] == b"S":
                    break
                if msg[0] == b"P":
                    self.pack(msg[1])  # before any job that needs it is taken
                    continue
                with self._cond:
                    if msg[0] == b"J":
                        job = marshal.loads(msg[1])  # noqa: S302 - from the parent, over its own pipe
                        slots = [_Slot(end - start) for _, start, end in job[1]]
                        self._slots[id(job[1])] = slots
                        self._fetch_q.append((job[1], slots))
                        msg = (b"j", job)
                    self._work_q.append(msg)  # type: ignore[arg-type]
                    self._cond.notify_all()
        except (OSError, EOFError):
            pass  # the parent stopped (or was killed)
        finally:  # whatever ends the stream ends the process (its jobs then fail in the parent)
            with self._cond:
                self._work_q.append(None)
                self._fetch_q.append(None)
                self._cond.notify_all()

    def take(self, kind: bytes, payload: Any) -> None:
        if kind == b"j":
            self.job(*payload)
        else:
            super().take(kind, payload)

    def _fetch(self) -> None:
        while True:
            with self._cond:
                while not self._fetch_q:
                    self._cond.wait()
                item = self._fetch_q.popleft()
            if item is None:
                return
            runs, slots = item
            for (pack, start, end), slot in zip(runs, slots, strict=True):
                with self._cond:
                    while self._held and self._held + slot.size > FETCH_AHEAD:
                        self._cond.wait()
                    self._held += slot.size
                slot.error = self._broken
                if slot.error is None:
                    try:
                        slot.data = self._load(slot, pack, start, end)
                    except BaseException as exc:  # the job reports it when it reaches this run
                        slot.error = exc
                        if isinstance(exc, RempartError) and not isinstance(exc, IntegrityError):
                            self._broken = exc  # retried already: later jobs fail at once
                slot.ready.set()

    def _load(self, slot: _Slot, pack: bytes, start: int, end: int) -> memoryview:
        """Bytes ``start..end`` of ``pack`` read into a pooled buffer (kept by ``slot``)."""
        n = end - start
        with self._cond:
            fits = [b for b in self._free if len(b) >= n]
            buf = min(fits, key=len) if fits else None
            if buf is not None:
                self._free.remove(buf)
        if buf is None:
            buf = bytearray(-(-n // BUF_STEP) * BUF_STEP)
        slot.buf = buf
        view = memoryview(buf)[:n]
        h = self._handle(pack)
        self.backend.call(lambda: self.vault.load_into(h, start, view))
        return view

    def read(self, runs: list[Run], i: int) -> memoryview:
        slots = self._slots[id(runs)]
        if i:  # the previous run is decoded (views of its blobs keep their own memory)
            self._release(slots[i - 1])
        slot = slots[i]
        slot.ready.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.data is not None
        return slot.data

    def _release(self, slot: _Slot) -> None:
        """The run is decoded (the plaintexts are copies): its budget and buffer go back."""
        with self._cond:
            if slot.size:
                self._held -= slot.size
                slot.size = 0
                slot.data = None
                self._cond.notify_all()
            buf, slot.buf = slot.buf, None
            if buf is not None:
                self._free.append(buf)
                while sum(map(len, self._free)) > FETCH_AHEAD:  # lengths of other runs: drop the smallest
                    self._free.remove(min(self._free, key=len))

    def done_with(self, runs: list[Run]) -> None:
        for slot in self._slots.pop(id(runs), []):
            slot.ready.wait()  # a run still being fetched holds its share of the budget
            self._release(slot)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipes
    out = os.dup(1)
    os.dup2(2, 1)  # print() in this process goes to stderr, never into the message stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        msg = recv(inp)  # K first: which kind of process this is
        if msg is None or msg[0] != b"K":
            return 0
        settings = marshal.loads(msg[1][FD.size :]) if len(msg[1]) > FD.size else {}  # noqa: S302
        child: Any = _RemoteChild(inp, out, settings) if settings.get("vault") else _Child(inp, out)
        del settings  # the token stays only in the client's headers
        child.take(*msg)
        child.serve()
    except (EOFError, BrokenPipeError):
        pass  # the parent stopped (or was killed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

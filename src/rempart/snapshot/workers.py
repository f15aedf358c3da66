"""The parent side of the reading processes (see ``worker_main`` for why and for the protocol).

``ReaderPool`` starts up to N ``python -m rempart.snapshot.worker_main`` processes (one for a
run that reads only what changed, more once files queue up) that share N + 1 pack buffers of
shared memory, hands each file to the one with the fewest bytes outstanding, and runs
one thread per process that answers its dedup questions and passes the packs it built to the write
session (a stored pack's buffer goes to the next process that needs one), and one more thread that
reports each finished file: a question waits only for the interpreter lock, never behind the
bookkeeping of files read before it (the process reads on only once it is answered).
If a process dies, every file it still had is reported as failed and the backup stops with an
error (also when it had no file left: it may have taken blobs it never stored), so nothing it
claimed is referenced by a snapshot.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import rempart
from rempart.core.errors import RempartError
from rempart.snapshot.wire import (
    FEATURES,
    ID,
    ID32,
    JUDGED,
    PACK,
    PBLOB,
    ReadOutcome,
    Request,
    decode_result,
    encode_request,
    recv,
    send,
)

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rempart.__file__)))


#: claim(ids) -> one byte per id (1: new, the caller must store it); store(pack name, pack bytes,
#: [(type, id, sealed length, plain length)], release) stores a pack and calls release() once the
#: bytes are no longer needed; done(caller's context, outcome)
Claim = Callable[[list[bytes]], bytes]
Store = Callable[[str, memoryview, list[tuple[int, bytes, int, int]], Callable[[], None]], None]
Done = Callable[[Any, ReadOutcome], None]
#: shared pack buffers beyond one per process (by default): a process that hands over a full
#: pack takes a spare one and goes on while its pack is stored; with none left, it waits for the
#: buffer of the next pack stored. The archiver gives one fewer than the packs the write
#: session keeps in flight (more for remote storage, where an upload takes longer)
SPARE_BUFFERS = 1
#: see ``ReaderPool``
GROW_BYTES = 128 << 20


class ReaderLost(RempartError):
    """A reading process ended without handing over every pack it built."""


class ReaderStartError(OSError):
    """The reading processes could not start (e.g. an interpreter that cannot run ``-m``)."""


def _shared_buffer(size: int) -> int:
    """A file descriptor of ``size`` bytes of memory a child process can map (pages are only
    allocated when written)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("rempart-pack", 0)
    else:  # other POSIX systems: an unlinked temporary file (its pages mostly stay in memory)
        fd = os.dup(tempfile.TemporaryFile().fileno())
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class _Proc:
    def __init__(self, setup: dict[str, Any], fds: list[int]) -> None:
        # the same interpreter and this very copy of the package; none of rempart's settings
        # (tokens, passphrases): the process needs only what arrives down its pipe
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMPART_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "rempart.snapshot.worker_main"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=1 << 16, pass_fds=fds,
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.wlock = threading.Lock()
        self.outstanding: dict[int, tuple[int, Any]] = {}  # request -> (bytes, caller's context)
        self.load = 0
        self.ready = threading.Event()  # set when the process said hello, or died
        self.alive = False
        self.closed = False  # said Z: every pack it built was handed over
        self.queries = 0  # Q messages answered
        self.dead = False  # its receiving thread has stopped: no more files for it
        payload = {k: v.hex() if isinstance(v, bytes) else v for k, v in setup.items()}
        self.write(b"K", json.dumps({**payload, "buffers": fds}).encode())

    def write(self, kind: bytes, payload: bytes) -> None:
        with self.wlock:
            stdin = self.popen.stdin
            assert stdin is not None
            send(stdin.fileno(), kind, payload)

    def give(self, buffer: int) -> None:
        """The process may fill ``buffer``."""
        try:
            self.write(b"D", ID32.pack(buffer))
        except (OSError, ValueError):
            pass  # the process has ended (or its pipe is closed): nothing will fill it again


class ReaderPool:
    """Up to ``workers`` reading processes. ``start`` of them start at once; each further one
    starts once every running process has more than ``grow_bytes`` waiting behind the largest
    file it has, so a backup of what changed in a day (a few large database files and some
    documents) runs one process and its buffers, and leaves the other core to the practice."""

    def __init__(self, workers: int, setup: dict[str, Any], claim: Claim, store: Store, done: Done,
                 start_timeout: float = 60.0, spare: int = SPARE_BUFFERS, start: int | None = None,
                 grow_bytes: int = GROW_BYTES) -> None:
        self._claim, self._store, self._done = claim, store, done
        self._grow_bytes = grow_bytes
        self._killed = False
        self._lock = threading.Lock()
        self._procs: list[_Proc] = []
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._maps: list[mmap.mmap] = []
        self._fds: list[int] = []  # kept open until every process has started (each inherits them)
        self._free: list[int] = []  # spare buffers
        self._waiting: deque[_Proc] = deque()  # processes that handed over a pack and have no buffer
        self._setup = setup
        self._workers = max(1, workers)
        #: (process, kind, payload) of each file's outcome, in the order each process sent them,
        #: then (process, b"", None) once its stream has ended; None stops the thread
        self._results: queue.SimpleQueue[tuple[_Proc, bytes, Any] | None] = queue.SimpleQueue()
        self._reporter = threading.Thread(target=self._report, name="reader-results", daemon=True)
        self._reporter.start()
        try:
            if os.name != "posix":
                raise OSError("shared pack buffers need a POSIX system")
            capacity = int(setup["capacity"])
            for _ in range(self._workers + spare):
                self._fds.append(_shared_buffer(capacity))
                self._maps.append(mmap.mmap(self._fds[-1], capacity))
            self._free = list(range(len(self._maps) - 1, -1, -1))  # pages are touched only when used
            for _ in range(min(self._workers, start or self._workers)):
                self._start()
            for proc in self._procs:  # each has imported what it needs and taken the run's keys
                if not proc.ready.wait(start_timeout) or not proc.alive:
                    raise OSError("a reading process did not start")
        except OSError as exc:
            self.kill()
            self.close()
            raise ReaderStartError(f"cannot start the reading processes ({exc}); reading in threads") from exc

    def _start(self) -> None:
        """Start one more process and give it a buffer (or queue it for the next one stored)."""
        proc = _Proc(self._setup, self._fds)
        with self._lock:
            self._procs.append(proc)
            buffer = self._free.pop() if self._free else None
            if buffer is None:
                self._waiting.append(proc)
            if len(self._procs) == self._workers:
                self._close_fds()
        if buffer is not None:
            proc.give(buffer)
        t = threading.Thread(target=self._receive, args=(proc,), name=f"reader-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)  # the processes have their own copies; the maps keep the memory
        self._fds = []

    def _grow(self) -> bool:
        """Whether to start another process: every running one has a backlog (the caller holds
        the lock)."""
        procs = self._procs
        if len(procs) >= self._workers or not self._fds:
            return False
        for p in procs:
            if not p.dead and p.load - max((w for w, _ in p.outstanding.values()), default=0) < self._grow_bytes:
                return False
        return True

    def submit(self, path: str, size: int, plan: list[tuple[int, int]], retries: int, context: Any) -> None:
        """Hand ``path`` to the least busy process; ``done(context, outcome)`` follows once."""
        with self._lock:
            grow = self._grow()
        if grow:
            try:
                self._start()  # ready once it has said hello; files go to the others until then
            except OSError:
                with self._lock:
                    self._close_fds()  # no further attempt
        with self._lock:
            live = [p for p in self._procs if p.alive and not p.dead]
            if live:
                proc = min(live, key=lambda p: p.load)
                req = self._next
                self._next += 1
                weight = size + 65536  # a file costs something even when empty
                proc.outstanding[req] = (weight, context)
                proc.load += weight
        if not live:  # nobody would ever report it
            self._done(context, ReadOutcome("failed", message="the reading processes have stopped"))
            return
        try:
            proc.write(b"R", encode_request(Request(req, path, size, plan, retries)))
        except OSError:
            pass  # the process died: its receiving thread reports every outstanding file

    def close(self) -> None:
        """Stop the processes once they have handed over their last packs. Raises
        ``ReaderLost`` if one ended before that (unless ``kill`` was called): blobs it was
        told to store may be missing."""
        with self._lock:
            self._close_fds()
        for p in self._procs:
            try:
                p.write(b"S", b"")
            except OSError:
                pass
        for t in self._threads:
            t.join()
        self._results.put(None)
        self._reporter.join()
        for p in self._procs:
            try:
                assert p.popen.stdin is not None
                p.popen.stdin.close()
            except OSError:
                pass
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        lost = [p for p in self._procs if not p.closed]
        if lost and not self._killed:
            raise ReaderLost("a reading process stopped before storing what it had read; nothing of this "
                             "run is kept, the next backup starts over")

    @property
    def processes(self) -> int:
        """How many processes were started so far."""
        return len(self._procs)

    @property
    def queries(self) -> int:
        """Dedup questions the processes asked so far (one per block or group of small files)."""
        return sum(p.queries for p in self._procs)

    def kill(self) -> None:
        self._killed = True
        for p in self._procs:
            if p.popen.poll() is None:
                p.popen.kill()

    # --- receiving thread, one per process ---------------------------------------------------

    def _finish(self, proc: _Proc, req: int, outcome: ReadOutcome) -> None:
        with self._lock:
            entry = proc.outstanding.pop(req, None)
            if entry is None:
                return  # already reported
            proc.load -= entry[0]
        self._done(entry[1], outcome)

    def _receive(self, proc: _Proc) -> None:
        """Answer ``proc``'s questions and take its packs here; pass the rest on to ``_report``."""
        stdout = proc.popen.stdout
        assert stdout is not None
        ended: tuple[str, BaseException | None, bool] = ("a reading process stopped unexpectedly", None, False)
        try:
            while True:
                msg = recv(stdout)
                if msg is None:
                    break
                kind, payload = msg
                if kind == b"Q":
                    proc.queries += 1
                    answer = self._claim([payload[i : i + 32] for i in range(0, len(payload), 32)])
                    try:
                        proc.write(b"A", answer)
                    except OSError:  # it died after asking (a broken pipe): as if its stream ended
                        break
                elif kind == b"P":
                    self._pack(proc, payload)
                elif kind == b"H":
                    proc.alive = True
                    proc.ready.set()
                elif kind == b"Z":
                    proc.closed = True
                else:
                    self._results.put((proc, kind, payload))
        except BaseException as exc:  # a failing store/claim (e.g. an upload error): stop the run
            ended = (f"{type(exc).__name__}: {exc}", exc, True)
        finally:
            proc.ready.set()
            self._results.put((proc, b"", ended))  # after every file it reported

    def _report(self) -> None:
        """Report each file's outcome, then each ended stream (every file its process still had
        fails)."""
        while True:
            item = self._results.get()
            if item is None:
                return
            proc, kind, payload = item
            try:
                if not kind:
                    message, cause, kill = payload
                    self._abandon(proc, message, cause, kill)
                elif kind == b"F":
                    req, ids, size, mtime, ctime, ino, mode, samples = decode_result(payload)
                    raw = judged = None
                    if samples and samples[0][0] == FEATURES:
                        raw = samples[0][1].decode()
                        if len(samples) > 1 and samples[1][0] == JUDGED:
                            judged = samples[1][1]
                        samples = []
                    self._finish(proc, req, ReadOutcome("ok", ids, size, mtime, ctime, ino, mode, samples,
                                                        features_raw=raw, judged_raw=judged))
                elif kind == b"C":
                    self._finish(proc, ID.unpack(payload)[0], ReadOutcome("changed"))
                elif kind in (b"E", b"X"):
                    req = ID.unpack_from(payload)[0]
                    message = payload[ID.size :].decode("utf-8", "replace")
                    self._finish(proc, req, ReadOutcome("oserror" if kind == b"E" else "failed", message=message))
            except BaseException as exc:  # a failing report: stop the run
                self._abandon(proc, f"{type(exc).__name__}: {exc}", exc, kill=True)

    def _pack(self, proc: _Proc, payload: bytes) -> None:
        buffer, length, digest = PACK.unpack_from(payload)
        blobs = [PBLOB.unpack_from(payload, i) for i in range(PACK.size, len(payload), PBLOB.size)]
        with self._lock:  # a spare buffer lets the process go on while its pack is stored
            spare = self._free.pop() if self._free else None
            if spare is None:
                self._waiting.append(proc)
        if spare is not None:
            proc.give(spare)
        self._store(digest.hex(), memoryview(self._maps[buffer])[:length], blobs, lambda: self._stored(buffer))

    def _stored(self, buffer: int) -> None:
        """The pack in ``buffer`` is stored: to the first process waiting for a buffer, or spare."""
        with self._lock:
            proc = self._waiting.popleft() if self._waiting else None
            if proc is None:
                self._free.append(buffer)
        if proc is not None:
            proc.give(buffer)

    def _abandon(self, proc: _Proc, message: str, cause: BaseException | None, kill: bool = False) -> None:
        """No more messages from ``proc``: report every file it still had as failed (the
        backup stops with an error) and give it no more."""
        with self._lock:
            proc.dead = True
            left = list(proc.outstanding)
        if proc.popen.poll() is None and (left or kill):
            proc.popen.kill()
        for req in left:
            self._finish(proc, req, ReadOutcome("failed", message=message, error=cause))

"""The parent side of the reading processes (see ``worker_main`` for why and for the protocol).

``ReaderPool`` starts N ``python -m rempart.snapshot.worker_main`` processes, hands each file to
the one with the fewest bytes outstanding, and runs one thread per process that answers its
dedup questions, passes its sealed blobs to the write session and reports each finished file.
If a process dies, every file it still had is reported as failed and the backup stops with an
error: nothing it claimed is referenced by a snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import rempart
from rempart.snapshot.worker_main import BLOB_HEAD, FEATURES, HEADER, ID, decode_result, encode_request, send

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rempart.__file__)))


@dataclass(frozen=True)
class ReadOutcome:
    """What became of one file handed to a reading process."""

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


#: claim(ids) -> one byte per id (1: new, the caller must store it); store([(type, id, sealed,
#: plain length)]) keeps those not stored yet; done(caller's context, outcome)
Blob = tuple[int, bytes, bytes | bytearray | memoryview, int]
Claim = Callable[[list[bytes]], bytes]
Store = Callable[[list[Blob]], None]
Done = Callable[[Any, ReadOutcome], None]


class ReaderStartError(OSError):
    """The reading processes could not start (e.g. an interpreter that cannot run ``-m``)."""


class _Proc:
    def __init__(self, index: int, setup: bytes) -> None:
        # the same interpreter and this very copy of the package; none of rempart's settings
        # (tokens, passphrases): the process needs only what arrives down its pipe
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMPART_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "rempart.snapshot.worker_main"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=1 << 20,
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.index = index
        self.wlock = threading.Lock()
        self.outstanding: dict[int, tuple[int, Any]] = {}  # request -> (bytes, caller's context)
        self.load = 0
        self.ready = threading.Event()  # set when the process said hello, or died
        self.alive = False
        self.write(b"K", setup)

    def write(self, kind: bytes, payload: bytes) -> None:
        with self.wlock:
            stdin = self.popen.stdin
            assert stdin is not None
            send(stdin.fileno(), kind, payload)


class ReaderPool:
    def __init__(self, workers: int, setup: dict[str, Any], claim: Claim, store: Store, done: Done,
                 start_timeout: float = 60.0) -> None:
        payload = json.dumps({k: v.hex() if isinstance(v, bytes) else v for k, v in setup.items()}).encode()
        self._claim, self._store, self._done = claim, store, done
        self._lock = threading.Lock()
        self._procs: list[_Proc] = []
        self._threads: list[threading.Thread] = []
        self._next = 0
        try:
            for i in range(max(1, workers)):
                proc = _Proc(i, payload)
                self._procs.append(proc)
                t = threading.Thread(target=self._receive, args=(proc,), name=f"reader-{i}", daemon=True)
                self._threads.append(t)
                t.start()
            for proc in self._procs:  # each has imported what it needs and taken the run's keys
                if not proc.ready.wait(start_timeout) or not proc.alive:
                    raise OSError("a reading process did not start")
        except OSError as exc:
            self.kill()
            self.close()
            raise ReaderStartError(f"cannot start the reading processes ({exc}); reading in threads") from exc

    def submit(self, path: str, size: int, plan: list[tuple[int, int]], retries: int, context: Any) -> None:
        """Hand ``path`` to the least busy process; ``done(context, outcome)`` follows once."""
        with self._lock:
            proc = min(self._procs, key=lambda p: p.load)
            req = self._next
            self._next += 1
            weight = size + 65536  # a file costs something even when empty
            proc.outstanding[req] = (weight, context)
            proc.load += weight
        try:
            proc.write(b"R", encode_request(req, path, plan, retries))
        except OSError:
            pass  # the process died: its receiving thread reports every outstanding file

    def close(self) -> None:
        for p in self._procs:
            try:
                p.write(b"S", b"")
                assert p.popen.stdin is not None
                p.popen.stdin.close()
            except OSError:
                pass
        for t in self._threads:
            t.join()
        for p in self._procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def kill(self) -> None:
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
        stdout = proc.popen.stdout
        assert stdout is not None
        buf = bytearray(1 << 20)  # reused: blob batches are copied into packs before the next read
        try:
            while True:
                head = stdout.read(HEADER.size)
                if len(head) < HEADER.size:
                    break
                n, k = HEADER.unpack(head)
                if n > len(buf):
                    buf = bytearray(n)
                view = memoryview(buf)[:n]
                if _read_exactly(stdout, view) < n:
                    break
                kind = bytes([k])
                if kind == b"B":
                    self._store(_blobs(view))
                    continue
                payload = bytes(view)
                if kind == b"H":
                    proc.alive = True
                    proc.ready.set()
                elif kind == b"Q":
                    ids = [payload[i : i + 32] for i in range(0, len(payload), 32)]
                    proc.write(b"A", self._claim(ids))
                elif kind == b"F":
                    req, ids, size, mtime, ctime, ino, mode, samples = decode_result(payload)
                    raw = None
                    if samples and samples[0][0] == FEATURES:
                        raw, samples = samples[0][1].decode(), []
                    self._finish(proc, req, ReadOutcome("ok", ids, size, mtime, ctime, ino, mode, samples,
                                                        features_raw=raw))
                elif kind == b"C":
                    self._finish(proc, ID.unpack(payload)[0], ReadOutcome("changed"))
                elif kind in (b"E", b"X"):
                    req = ID.unpack_from(payload)[0]
                    message = payload[ID.size :].decode("utf-8", "replace")
                    self._finish(proc, req, ReadOutcome("oserror" if kind == b"E" else "failed", message=message))
        except BaseException as exc:  # a failing store/claim (e.g. an upload error): stop the run
            self._abandon(proc, f"{type(exc).__name__}: {exc}", exc)
            return
        finally:
            proc.ready.set()
        self._abandon(proc, "a reading process stopped unexpectedly", None)

    def _abandon(self, proc: _Proc, message: str, cause: BaseException | None) -> None:
        """Report every file ``proc`` still had as failed (the backup stops with an error)."""
        with self._lock:
            left = list(proc.outstanding)
        if proc.popen.poll() is None and left:
            proc.popen.kill()
        for req in left:
            self._finish(proc, req, ReadOutcome("failed", message=message, error=cause))


def _blobs(view: memoryview) -> list[Blob]:
    out: list[Blob] = []
    pos = 0
    while pos < len(view):
        btype, bid, plain, n = BLOB_HEAD.unpack_from(view, pos)
        pos += BLOB_HEAD.size
        out.append((btype, bid, view[pos : pos + n], plain))
        pos += n
    return out


def _read_exactly(stream: IO[bytes], view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got

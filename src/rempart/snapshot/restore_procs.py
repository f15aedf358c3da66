"""The parent side of the restore processes (see ``restore_child`` for why and the protocol).

``RestoreProcs`` starts N ``python -m rempart.snapshot.restore_child`` processes that inherit
the target's directory descriptor, turns each batch of files into a job (index lookups, the
byte ranges of pack files to read, the data keys of packs new to that process) and hands it to
the process with the fewest bytes outstanding. One thread per process reports finished and
failed jobs. Used for repositories in a local folder (a process opens the pack files itself)
and in a vault (a process opens its own connections and fetches its jobs' byte ranges: the
vault's settings, token included, go down its pipe); other backends restore in threads.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import rempart
from rempart.core import errors
from rempart.core.errors import IntegrityError, RempartError
from rempart.crypto.aead import DataKey
from rempart.repository.reader import ReadSession
from rempart.snapshot.restore_child import DONE, FD, JOB
from rempart.snapshot.tree import Node
from rempart.snapshot.wire import recv, send
from rempart.storage.base import FileType, Handle

HAVE_FADVISE = hasattr(os, "posix_fadvise")
#: envelope reads at once (each a small ranged read: over a network mostly a round trip)
KEY_READS = 4
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rempart.__file__)))

#: done(files, bytes) or failed(exception): called once per job, from a receiving thread
Done = Callable[[int, int], None]
Failed = Callable[[BaseException], None]


def pack_order(batch: list[tuple[str, Node]], locs: list[Any]) -> tuple[list[tuple[str, Node]], list[int]]:
    """``batch`` sorted by where each file's first blob lies (``locs``: the index locations of
    the batch's blobs, file after file), and the positions of those blobs in the new order:
    folders list files by name, packs hold them in the order they were read, and reading in
    pack order lets one request serve several files."""
    keyed = []
    i = 0
    for rel, node in batch:
        n = len(node.content)
        first = locs[i] if n else None
        keyed.append(((first.pack, first.offset) if first is not None else (b"", -1), i, n, rel, node))
        i += n
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [(rel, node) for _, _, _, rel, node in keyed], [j for _, start, n, _, _ in keyed for j in range(start, start + n)]


class ProcsStartError(OSError):
    """The restore processes could not start (the restore then runs in threads)."""


@dataclass(frozen=True)
class PackSource:
    """Where the restore processes read packs: ``path`` gives a pack file's path in a local
    folder; ``settings`` (a vault's client settings and the retry parameters, sent down each
    process's pipe: they hold the token) lets a process fetch byte ranges itself."""

    path: Callable[[bytes], str] | None = None
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def local(self) -> bool:
        return self.path is not None


def pack_source(session: ReadSession) -> PackSource | None:
    """How restore processes can read this session's packs: a plain local folder or a vault,
    possibly behind permission checks and retries (no wrapper that changes reads, such as fault
    injection or bandwidth limits); else None (the restore runs in threads)."""
    from rempart.storage.local import LocalBackend
    from rempart.storage.wrappers import PermissionedBackend, RetryBackend

    backend = session.repo.backend
    retry = (1, 0.0, 0.0)
    while isinstance(backend, (PermissionedBackend, RetryBackend)):
        if isinstance(backend, RetryBackend):
            retry = (backend.attempts, backend.base_delay, backend.max_delay)
        backend = backend.inner
    if type(backend) is LocalBackend:
        local = backend
        return PackSource(path=lambda pack: str(local.file_path(Handle(FileType.DATA, pack.hex()))))
    vaultclient = sys.modules.get("rempart.storage.vaultclient")  # loaded if the backend is one
    if vaultclient is not None and type(backend) is vaultclient.VaultBackend:
        return PackSource(settings={"vault": backend.settings(), "retry": retry})  # type: ignore[attr-defined]
    return None


def pack_paths(session: ReadSession) -> Callable[[bytes], str] | None:
    """Where a pack's file lies, when the repository is a plain local folder; else None."""
    source = pack_source(session)
    return source.path if source is not None else None


class _Proc:
    def __init__(self, root_fd: int, settings: dict[str, Any]) -> None:
        # the same interpreter and this very copy of the package; none of rempart's settings
        # (passphrases, tokens): the process needs only what arrives down its pipe
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMPART_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "rempart.snapshot.restore_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=(root_fd,),
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.wlock = threading.Lock()
        self.packs: set[bytes] = set()  # packs whose key and path this process has
        self.jobs: dict[int, tuple[int, Done, Failed]] = {}  # job -> (bytes, done, failed)
        self.load = 0
        self.ready = threading.Event()
        self.alive = False
        self.gone = False  # its receiving thread has ended: no job may be given to it any more
        self.write(b"K", FD.pack(root_fd), marshal.dumps(settings))

    def write(self, kind: bytes, *parts: bytes) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        send(stdin.fileno(), kind, *parts)


class RestoreProcs:
    def __init__(self, session: ReadSession, source: PackSource, root_fd: int,
                 workers: int, start_timeout: float = 60.0) -> None:
        self.session, self._source = session, source
        self._paths = source.path or (lambda pack: "")
        self._lock = threading.Lock()
        self._procs: list[_Proc] = []
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._started = False
        self._closed = False
        self._advise_fds: dict[bytes, int] = {}  # packs opened to ask for read-ahead, oldest first
        self._start_timeout = start_timeout
        # jobs planned by the walk, handed to their processes by the sender thread once the
        # data keys they need are read (a vault answers each envelope read after a round trip)
        self._lock_cv = threading.Condition(self._lock)
        self._sends: deque[tuple[_Proc, int, list[tuple[bytes, int, int]], list[object], list[bytes], str] | None]
        self._sends = deque()
        self._keys: dict[bytes, Future[DataKey]] = {}
        self._key_pool = ThreadPoolExecutor(max_workers=KEY_READS, thread_name_prefix="pack-keys")
        self._send_thread = threading.Thread(target=self._sender, name="restore-send", daemon=True)
        self._send_thread.start()
        try:
            for i in range(max(1, workers)):
                proc = _Proc(root_fd, source.settings)
                self._procs.append(proc)
                t = threading.Thread(target=self._receive, args=(proc,), name=f"restore-{i}", daemon=True)
                self._threads.append(t)
                t.start()
        except OSError as exc:
            self.kill()
            self.close()
            raise ProcsStartError(f"cannot start the restore processes ({exc})") from exc

    def wait_ready(self) -> None:
        """Wait for every process's hello (they start while the parent walks the first trees)."""
        if self._started:
            return
        for proc in self._procs:
            if not proc.ready.wait(self._start_timeout) or not proc.alive:
                self.kill()
                self.close()
                raise ProcsStartError("a restore process did not start")
        self._started = True

    def submit(self, batch: list[tuple[str, Node]], done: Done, failed: Failed) -> None:
        """Restore ``batch`` in the least busy process; ``done`` or ``failed`` follows once."""
        job_runs, files, packs = self._plan(batch)
        for pack, start, end in job_runs:
            self._advise(pack, start, end)
        weight = sum(node.size for _, node in batch) + 65536 * len(batch)
        with self._lock:
            live = [p for p in self._procs if not p.gone]
            if not live:
                failed(RempartError("a restore process stopped unexpectedly"))
                return
            proc = min(live, key=lambda p: p.load)
            job = self._next
            self._next += 1
            proc.jobs[job] = (weight, done, failed)
            proc.load += weight
        self._prefetch_keys(packs)
        with self._lock:
            self._sends.append((proc, job, job_runs, files, packs, batch[0][0]))
            self._lock_cv.notify()

    def _prefetch_keys(self, packs: list[bytes]) -> None:
        """Start reading the envelopes of ``packs`` not asked for yet (one request each, several
        at once): the walk goes on while they travel."""
        for pack in packs:
            if pack not in self._keys:
                self._keys[pack] = self._key_pool.submit(self.session.pack_key, pack)

    def _sender(self) -> None:
        """Hands the planned jobs to their processes in order, each once the data keys of its
        packs new to that process are there (so the walk never waits for a vault's answer)."""
        while True:
            with self._lock:
                while not self._sends:
                    self._lock_cv.wait()
                item = self._sends.popleft()
            if item is None:
                return
            proc, job, job_runs, files, packs, rel = item
            try:
                keys = [(pack, self._keys[pack].result().raw) for pack in packs if pack not in proc.packs]
            except Exception as exc:  # a pack whose header cannot be read or unwrapped
                self._finish(proc, job, _naming(exc, rel))
                continue
            try:
                with proc.wlock:
                    for pack, raw in keys:
                        proc.write(b"P", pack, raw, self._paths(pack).encode())
                        proc.packs.add(pack)
                    proc.write(b"J", marshal.dumps((job, job_runs, files)))
            except OSError:
                pass  # the process died: its receiving thread reports every job it had

    def _plan(self, batch: list[tuple[str, Node]]) -> tuple[list[tuple[bytes, int, int]], list[object], list[bytes]]:
        """Index lookups and read ranges of ``batch``, its files sorted by where their first blob
        lies (packs hold files in the order they were backed up; folders list them by name)."""
        ids = [b for _, node in batch for b in node.content]
        locs = self.session.locate(ids)
        if len(batch) > 1:
            batch, order = pack_order(batch, locs)
            ids, locs = [ids[j] for j in order], [locs[j] for j in order]
        runs: list[tuple[bytes, int, int]] = []
        refs: list[tuple[int, int, int, int, bytes]] = []
        for j, k, pack, start, end in self.session.runs(locs):
            if start < 0:
                refs.append((-1, 0, 0, 0, ids[j]))
                continue
            r = len(runs)
            runs.append((pack, start, end))
            for m in range(j, k):
                loc = locs[m]
                assert loc is not None
                refs.append((r, loc.offset - start, loc.length, int(loc.type), ids[m]))
        files: list[object] = []
        i = 0
        for rel, node in batch:
            n = len(node.content)
            files.append((rel, node.size, node.mode, node.mtime_ns, refs[i : i + n]))
            i += n
        return runs, files, list(dict.fromkeys(p for p, _, _ in runs))

    def _advise(self, pack: bytes, start: int, end: int) -> None:
        """Ask the kernel to start reading a job's ranges now (a cold cache): the job waits
        behind a few others, so its bytes are in memory when its process reaches it."""
        if not HAVE_FADVISE or not self._source.local:
            return
        fd = self._advise_fds.get(pack)
        try:
            if fd is None:
                if len(self._advise_fds) >= 16:
                    os.close(self._advise_fds.pop(next(iter(self._advise_fds))))
                fd = self._advise_fds[pack] = os.open(self._paths(pack), os.O_RDONLY | os.O_CLOEXEC)
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only a hint: the process reports a pack it cannot read

    def close(self) -> None:
        """Let the processes finish their jobs and stop; wait for every report."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._sends.append(None)
            self._lock_cv.notify()
        self._send_thread.join()  # every planned job is in its process's pipe (or failed)
        self._key_pool.shutdown(wait=True, cancel_futures=True)
        for p in self._procs:
            try:
                with p.wlock:
                    p.write(b"S")
                assert p.popen.stdin is not None
                p.popen.stdin.close()
            except OSError:
                pass
        for t in self._threads:
            t.join()
        for fd in self._advise_fds.values():
            os.close(fd)
        self._advise_fds.clear()
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

    def _finish(self, proc: _Proc, job: int, outcome: tuple[int, int] | BaseException) -> None:
        with self._lock:
            entry = proc.jobs.pop(job, None)
            if entry is None:
                return
            proc.load -= entry[0]
        if isinstance(outcome, BaseException):
            entry[2](outcome)
        else:
            entry[1](*outcome)

    def _receive(self, proc: _Proc) -> None:
        stdout = proc.popen.stdout
        assert stdout is not None
        try:
            while True:
                msg = recv(stdout)
                if msg is None:
                    break
                kind, payload = msg
                if kind == b"D":
                    job, files, size = DONE.unpack(payload)
                    self._finish(proc, job, (files, size))
                elif kind == b"E":
                    job = JOB.unpack_from(payload)[0]
                    name, _, message = payload[JOB.size :].partition(b"\0")
                    self._finish(proc, job, _error(name.decode("ascii", "replace"), message.decode("utf-8", "replace")))
                elif kind == b"H":
                    proc.alive = True
                    proc.ready.set()
        finally:
            proc.ready.set()
            with self._lock:
                left = list(proc.jobs)
                proc.gone = True
            for job in left:
                self._finish(proc, job, RempartError("a restore process stopped unexpectedly"))


def _naming(exc: BaseException, rel: str) -> BaseException:
    """``exc`` with the file it stopped (same class when it can be built from a message)."""
    message = f"{rel}: cannot restore: {exc}"
    if isinstance(exc, RempartError):
        try:
            named = type(exc)(message)
        except TypeError:
            return exc
        named.__cause__ = exc
        return named
    return IntegrityError(message)


def _error(name: str, message: str) -> BaseException:
    """The exception a process reported: the class of ``rempart.core.errors`` it names."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RempartError):
        try:
            return cls(message)
        except TypeError:
            return RempartError(message)
    return OSError(message)


def default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


"""Pipeline pieces of the archiver: the in-flight gate, folders waiting for their files, the
detection sample collector, and read-aheads of folder metadata and of file contents. Imports
nothing heavy: the backup command starts the metadata read-ahead before the rest of the program
is imported."""

from __future__ import annotations

import heapq
import os
import queue
import stat
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from pathlib import Path
from typing import Generic, TypeVar

from rempart.snapshot.tree import Node

T = TypeVar("T")


class Gate:
    """At most ``limit`` files and ``max_bytes`` of weight in flight (a file weighs what is read
    ahead of it, see ``ContentReadAhead``; one file is always let through). The walker (the only
    thread that acquires) is woken when half of both are free again, not at every finished
    file: far fewer thread switches, which on a busy 2-core machine each cost a time slice with
    the GIL held."""

    def __init__(self, limit: int, max_bytes: int = 1 << 62) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._limit = max(1, limit)
        self._max_bytes = max(1, max_bytes)
        self._n = 0
        self._bytes = 0
        self._waiting = False

    def acquire(self, weight: int = 0) -> None:
        with self._cond:
            if self._n >= self._limit or (self._n and self._bytes + weight > self._max_bytes):
                self._waiting = True
                while self._n and (self._n > self._limit // 2 or self._bytes > self._max_bytes // 2):
                    self._cond.wait()
                self._waiting = False
            self._n += 1
            self._bytes += weight

    def release(self, weight: int = 0) -> None:
        with self._cond:
            self._n -= 1
            self._bytes -= weight
            if self._waiting and self._n <= self._limit // 2 and self._bytes <= self._max_bytes // 2:
                self._cond.notify()


class ContentReadAhead:
    """Asks the kernel to start reading the first ``max_bytes`` of files the archiver has
    handed out but no reader has opened yet (``posix_fadvise(WILLNEED)``, from one thread,
    nothing read into this process). A reader works through one file at a time and waits for
    the disk at each small file on a cold cache; with the next files already on their way it
    rarely does (2 GiB practice folder, cold: 18.3 -> 16.0 s). How far it runs ahead is bounded
    by the archiver's in-flight gate. Files are opened non-blocking and without following a
    link, so a file swapped for a FIFO or a link since it was listed is skipped; errors are
    ignored (the reader reports them)."""

    _FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOATIME", 0)

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.enabled = hasattr(os, "posix_fadvise") and max_bytes > 0

    def advise(self, path: str) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="read-ahead-content", daemon=True)
            self._thread.start()
        self._queue.put(path)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        flags = self._FLAGS
        while (path := self._queue.get()) is not None:
            try:
                fd = os.open(path, flags)
            except PermissionError:  # O_NOATIME needs to own the file
                try:
                    fd = os.open(path, flags & ~getattr(os, "O_NOATIME", 0))
                except OSError:
                    continue
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, self.max_bytes, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


class Lanes(Generic[T]):
    """Folders listed but not walked yet, in two lanes walked in turn, so that a folder of many
    small files (work for the backup process: one answer, one record per file) and a folder of
    large ones (work for the disk) are read at the same time rather than one after the other.

    Each lane is walked depth first. When one lane runs dry it takes the other's shallowest
    waiting folder (usually the largest piece of work left there). The walker lists its next folder
    from the lane that has handed out less so far: a file costs its size plus ``FILE_COST``.
    2 GiB practice folder, cold (documents before X-rays; docs/benchmarks.md, session 8):
    the two sorts of folders overlap instead of taking turns."""

    FILE_COST = 64 * 1024

    def __init__(self) -> None:
        self._lanes: tuple[deque[T], deque[T]] = (deque(), deque())
        self._cost = [0, 0]
        self._current = 0

    def push(self, folders: list[T]) -> None:
        """The subfolders of the folder just listed, in walk order."""
        self._lanes[self._current].extend(reversed(folders))

    def charge(self, size: int) -> None:
        """A file of ``size`` bytes of the folder just listed is to be read."""
        self._cost[self._current] += size + self.FILE_COST

    def next(self) -> T | None:
        """The folder to list next (None: the walk is over)."""
        a, b = self._lanes
        for mine, other, k in ((a, b, 0), (b, a, 1)):
            if not mine and len(other) >= 2:
                mine.append(other.popleft())
                self._cost[k] = self._cost[1 - k]  # from an even start
        if not a and not b:
            return None
        self._current = 0 if a and (not b or self._cost[0] <= self._cost[1]) else 1
        return self._lanes[self._current].pop()


class Folder:
    """A folder being archived. Its tree is saved by whichever thread drops its last hold:
    one hold for the walker while it lists the folder, one per file being read and one per
    subfolder not finished yet. So the walker never waits for a folder's files."""

    __slots__ = ("done", "holds", "nodes", "path", "prev")

    def __init__(self, path: str, done: Callable[[bytes | None], None], prev: tuple[bytes, bytes] | None) -> None:
        self.path = path
        self.nodes: list[Node] = []
        self.holds = 1
        self.done = done
        self.prev = prev  # (signature, tree id) recorded by the previous run


def stat_source(path: Path) -> os.stat_result:
    """The status of a path given to back up: of the path itself (``lstat``), except that a
    symbolic link to a folder is followed. Backing up ``/data``, a link to ``/mnt/disk/data``,
    means its files (stored under ``/data``), not one link and nothing else. Links met inside
    the sources are stored as links."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:  # a dangling link: stored as the link it is
            return st
        if stat.S_ISDIR(target.st_mode):
            return target
    return st


def collect_samples(plan: list[tuple[int, int]], out: list[tuple[int, bytes]], offset: int, chunk: memoryview) -> None:
    """Append to ``out`` the bytes of ``chunk`` (file bytes from ``offset``) that fall in the
    planned ranges; ``plan`` is sorted by offset and its ranges do not overlap (the observer's
    contract), so the loop starts at the last range beginning at or before the chunk (bisect)
    and stops at the first range past it. A range cut by a chunk boundary is continued in place."""
    end = offset + len(chunk)
    i = bisect_right(plan, (offset, _BIG)) - 1
    if i < 0:
        i = 0
    n = len(plan)
    while i < n:
        start, length = plan[i]
        if start >= end:
            return
        i += 1
        stop = start + length
        if stop <= offset:
            continue
        lo = start if start > offset else offset
        hi = stop if stop < end else end
        if lo < hi:
            piece = bytes(chunk[lo - offset : hi - offset])
            if start < lo and out and _same_range(out[-1], start, lo):
                out[-1] = (out[-1][0], out[-1][1] + piece)
            else:
                out.append((lo, piece))


_BIG = 1 << 62


def _same_range(last: tuple[int, bytes], start: int, lo: int) -> bool:
    """The piece collected last belongs to the planned range beginning at ``start`` and ends where
    the chunk's piece of that range begins."""
    return last[0] >= start and last[0] + len(last[1]) == lo


class MetadataReadAhead:
    """Walks the backup paths in the archiver's order (sorted names, depth first) and stats
    every entry, discarding the results, so that the folders and inodes are in the kernel's
    cache when the archiver gets there. On a cold cache a backup with nothing changed waits
    mostly for these reads; started before the program's imports and the index load, the
    read-ahead overlaps them (restic's progress scanner does the same). It reads only
    metadata, never file contents, and stops when ``stop`` is called or after ``max_entries``.

    ``threads`` walkers share one queue of folders ordered as the archiver will visit them
    (default four: several inode reads waiting at once keep the disk busy; cold, the read-ahead
    alone over 8,820 files took 0.57 s with one walker, 0.46 s with two, 0.32-0.42 s with four,
    and the no-change backup's median went 1.37 -> 1.24 s over five interleaved runs, same CPU). ``folders`` are walked first (the repository's pack folders, listed before
    the walk starts), and ``files`` are whole files wanted soon (databases, the program's
    modules): ``file_threads`` threads open them, several at once since opening waits for the
    folder and inode, and ask the kernel to start reading them (``posix_fadvise``); nothing is
    read into memory here."""

    #: files larger than this are left to be read on demand (a large library is mostly unused)
    max_file = 4 << 20

    def __init__(self, paths: Iterable[Path], max_entries: int = 2_000_000, *, threads: int = 4,
                 folders: Iterable[Path] = (), files: Iterable[Path | str] = (), file_threads: int = 4) -> None:
        self._stopped = threading.Event()
        self._left = max_entries
        self._files = iter(files)  # iterated by the threads: it may read a list itself
        self._files_lock = threading.Lock()
        self.visited = 0
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0
        # (rank, path components, path): 0 before 1, then depth-first in sorted name order
        self._queue: list[tuple[int, tuple[str, ...], str]] = []
        self._roots: set[str] = set()  # checked before they are listed (found folders are folders)
        for rank, roots in ((0, folders), (1, paths)):
            for p in roots:
                s = os.fspath(p)
                self._queue.append((rank, Path(s).parts, s))
                self._roots.add(s)
        heapq.heapify(self._queue)
        self._threads = [threading.Thread(target=self._run, name="read-ahead", daemon=True)
                         for _ in range(max(1, threads))]
        # opening a file waits for its folder and inode: several at once keep the disk busy
        self._threads += [threading.Thread(target=self._advise, name="read-ahead-files", daemon=True)
                          for _ in range(file_threads if hasattr(os, "posix_fadvise") else 0)]

    def start(self) -> MetadataReadAhead:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                while not queue and self._busy and not self._stopped.is_set():
                    cond.wait(0.5)
                if not queue or self._stopped.is_set():
                    cond.notify_all()
                    return
                rank, key, path = heapq.heappop(queue)
                self._busy += 1
            try:
                self._scan(rank, key, path)
            finally:
                with cond:
                    self._busy -= 1
                    cond.notify_all()

    def _scan(self, rank: int, key: tuple[str, ...], path: str) -> None:
        try:
            if path in self._roots and (os.path.islink(path) or not os.path.isdir(path)):
                return  # a backup path (folders found by the walk are known to be folders)
            with os.scandir(path) as it:
                entries = sorted(it, key=_ENTRY_NAME)
        except OSError:
            return
        with self._cond:  # counted per folder, not per entry: one lock, not one per file
            if self._stopped.is_set():
                return
            n = min(len(entries), self._left - self.visited)
            self.visited += n
        stopped = self._stopped.is_set
        for i, e in enumerate(entries[:n]):  # the archiver's order: each folder as soon as it is listed
            if not i & 255 and i and stopped():
                return
            try:
                e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    with self._cond:
                        heapq.heappush(self._queue, (rank, (*key, e.name), e.path))
                        self._cond.notify()
            except OSError:
                continue

    def _advise(self) -> None:
        while not self._stopped.is_set():
            try:
                with self._files_lock:
                    f = next(self._files, None)
            except (OSError, ValueError):  # a list that cannot be read, or being read by another
                return
            if f is None:
                return
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_size <= self.max_file:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


_ENTRY_NAME = attrgetter("name")

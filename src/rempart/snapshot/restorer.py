"""The restorer: writes a snapshot (or parts of it) into a target folder.

Safety: every name is checked (no separators, no ``..``), and every file system operation is
relative to a directory file descriptor opened with O_NOFOLLOW, so neither hostile names in a
snapshot nor symlinks planted in the target can make the restore write outside the target.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rempart.core.errors import DecryptionError, IntegrityError, UserError, local_error
from rempart.repository.reader import ReadSession
from rempart.snapshot.restore_procs import (
    ProcsStartError,
    RestoreProcs,
    default_workers,
    pack_order,
    pack_source,
)
from rempart.snapshot.restore_write import O_DIRECTORY, make_dir, remove_existing, set_times, write_file
from rempart.snapshot.tree import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, check_name, decode_tree


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    #: how many restore processes wrote the files (0: threads of this process)
    processes: int = 0


class TreeReader:
    """Walks trees of a snapshot (needs a read session)."""

    def __init__(self, session: ReadSession) -> None:
        self.session = session
        self._ahead: dict[bytes, bytes] = {}

    def prefetch(self, tree_ids: list[bytes]) -> None:
        """Read these trees now, together (neighbouring trees of a pack in one request, instead
        of one request each when the walk reaches them); :meth:`tree` takes them from here once."""
        want = [t for t in dict.fromkeys(tree_ids) if t not in self._ahead]
        if len(want) < 2:
            return
        try:
            found = self.session.locate(want)
            # in pack order: a folder's trees were written children first, so neighbours in a
            # pack are often listed in the opposite order
            order = sorted(range(len(want)), key=lambda i: (lambda loc: (loc.pack, loc.offset) if loc else (b"", -1))(found[i]))
            ids = [want[i] for i in order]
            for tid, data in zip(ids, self.session.load_blobs(ids, locations=[found[i] for i in order]), strict=False):
                self._ahead[tid] = bytes(data)
        except (IntegrityError, DecryptionError):
            pass  # a damaged tree fails (with its own error) when the walk reaches it

    def tree(self, tree_id: bytes) -> list[Node]:
        data = self._ahead.pop(tree_id, None)
        nodes = decode_tree(self.session.load_blob(tree_id) if data is None else data)
        for n in nodes:
            check_name(n.name)
        return nodes

    def walk(self, tree_id: bytes, prefix: PurePosixPath = PurePosixPath("/")) -> Iterator[tuple[PurePosixPath, Node]]:
        for n in self.tree(tree_id):
            p = prefix / n.name
            yield p, n
            if n.type == KIND_DIR and n.subtree is not None:
                yield from self.walk(n.subtree, p)

    def find(self, tree_id: bytes, path: PurePosixPath) -> Node | None:
        node: Node | None = None
        current: bytes | None = tree_id
        for part in path.parts[1:] if path.is_absolute() else path.parts:
            if current is None:
                return None
            node = next((n for n in self.tree(current) if n.name == part), None)
            if node is None:
                return None
            current = node.subtree
        return node


class Restorer:
    """Restores files in batches, in restore processes or on a small thread pool.

    The walk (main thread) creates folders and symlinks and groups consecutive files into
    batches of about ``BATCH_BYTES``; a worker reads a batch's blobs as one stream, so small files
    stored back to back in a pack cost one read, and writes the files one after the other.
    From a repository in a local folder or in a vault the workers are processes
    (``restore_procs``: threads share one interpreter lock and kept only part of two cores busy;
    from a vault each process fetches its own byte ranges); from other backends, or if the
    processes cannot start, ``workers`` threads. At most two batches per worker are in
    flight (bounded memory).
    """

    BATCH_BYTES = 4 * 1024 * 1024
    BATCH_FILES = 256
    JOBS_PER_PROCESS = 2

    def __init__(self, session: ReadSession, *, workers: int = 3, processes: int | None = None,
                 progress: Callable[[RestoreStats], None] | None = None) -> None:
        """``processes``: how many restore processes for a local or vault repository (None:
        one per core, 2 to 4; 0: threads only)."""
        self.session = session
        self.reader = TreeReader(session)
        self.stats = RestoreStats()
        self.progress = progress
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
        self._futures: list[Future[None]] = []
        self._nprocs = default_workers() if processes is None else max(0, processes)
        self._source = pack_source(session) if self._nprocs and os.name == "posix" else None
        self._procs: RestoreProcs | None = None
        # batches in flight: a process's jobs wait in its pipe, their bytes being read ahead
        ahead = self.JOBS_PER_PROCESS * self._nprocs if self._source is not None else 0
        self._slots = threading.BoundedSemaphore(max(workers * 2, ahead))
        self._lock = threading.Lock()
        self._dir_times: list[tuple[str, Node]] = []
        self._root_fd = -1
        self._exclude: set[PurePosixPath] = set()
        #: over a network the session steps over gaps between blobs, so larger batches let more
        #: neighbouring small files share one request (memory does not grow: batches stream)
        self.batch_bytes = self.BATCH_BYTES * (4 if session.max_gap else 1)
        self._batch: list[tuple[str, Node]] = []
        self._batch_bytes = 0
        self._failed: BaseException | None = None
        #: the ``include`` paths found in the snapshot (the others matched nothing)
        self.matched: set[PurePosixPath] = set()

    def restore(self, tree_id: bytes, target: Path, include: list[PurePosixPath] | None = None,
                *, exclude: set[PurePosixPath] | None = None,
                extra: dict[PurePosixPath, Node] | None = None) -> RestoreStats:
        """Restore ``tree_id`` (only ``include`` if given, never ``exclude``), then ``extra``
        nodes (files from other snapshots) at their paths.

        A file that cannot be restored (missing or damaged blob) is removed again and the restore
        raises :class:`IntegrityError` naming it, after the files already under way are done.
        """
        try:
            target.mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(target, os.O_RDONLY | O_DIRECTORY)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"the restore target {target} exists and is not a folder",
                            hint="name a folder (it is created if needed)") from None
        except OSError as exc:
            raise local_error(f"restore target {target}", exc) from exc
        self._exclude = exclude or set()
        if self._source is not None:
            try:  # they start while the first trees are read
                self._procs = RestoreProcs(self.session, self._source, self._root_fd, self._nprocs)
            except ProcsStartError:
                self._procs = None
            else:
                self.stats.processes = self._nprocs
        try:
            self._restore_tree(tree_id, "", PurePosixPath("/"), include)
            for path, node in sorted((extra or {}).items()):
                parts = path.parts[1:]
                rel = ""
                for part in parts[:-1]:
                    rel = f"{rel}/{check_name(part)}" if rel else check_name(part)
                    make_dir(self._root_fd, rel)
                check_name(node.name)
                rel = f"{rel}/{parts[-1]}" if rel else parts[-1]
                self._add_file(rel, node)
            self._flush()
            if self._procs is not None:
                self._procs.close()  # waits for every job's report
            for f in self._futures:
                f.result()
            if self._failed is not None:
                raise self._failed
            # directory modes and mtimes last, deepest first, once their content is written
            for rel, node in reversed(self._dir_times):
                set_times(node, rel, self._root_fd)
        except OSError as exc:  # writing into the target failed (a full disk, say)
            raise local_error(f"restore into {target}", exc) from exc
        finally:
            if self._procs is not None:
                self._procs.close()
            self._pool.shutdown(wait=True)
            os.close(self._root_fd)
        return self.stats

    def _wanted(self, path: PurePosixPath, include: list[PurePosixPath] | None) -> tuple[bool, bool]:
        """(restore this node, descend into it)."""
        if not include:
            return True, True
        for inc in include:
            if path == inc or inc in path.parents:
                self.matched.add(inc)
                return True, True
            if path in inc.parents:
                return False, True
        return False, False

    def _restore_tree(self, tree_id: bytes, rel: str, path: PurePosixPath,
                      include: list[PurePosixPath] | None) -> None:
        filtered = bool(include or self._exclude)  # else skip the (slow) PurePosixPath work
        nodes = self.reader.tree(tree_id)
        if not filtered:  # the subfolders' trees in one go (a filtered restore may skip most)
            self.reader.prefetch([n.subtree for n in nodes if n.type == KIND_DIR and n.subtree is not None])
        for node in nodes:
            child = f"{rel}/{node.name}" if rel else node.name
            p = path
            take = True
            if filtered:
                p = path / node.name
                take, descend = self._wanted(p, include)
                if not descend or p in self._exclude:
                    continue
            if node.type == KIND_DIR:
                make_dir(self._root_fd, child)
                self._dir_times.append((child, node))
                self.stats.dirs += take
                if node.subtree is not None:
                    self._restore_tree(node.subtree, child, p if filtered else path / node.name, include)
            elif not take:
                continue
            elif node.type == KIND_FILE:
                self._add_file(child, node)
            elif node.type == KIND_SYMLINK and node.target is not None:
                remove_existing(self._root_fd, child)
                os.symlink(node.target, child, dir_fd=self._root_fd)
                set_times(node, child, self._root_fd)
                self.stats.symlinks += 1
            elif statmod.S_ISFIFO(node.mode) and hasattr(os, "mkfifo"):
                remove_existing(self._root_fd, child)
                os.mkfifo(child, statmod.S_IMODE(node.mode), dir_fd=self._root_fd)
                set_times(node, child, self._root_fd)

    def _add_file(self, rel: str, node: Node) -> None:
        if self._batch and self._batch_bytes + node.size > self.batch_bytes:
            self._flush()
        self._batch.append((rel, node))
        self._batch_bytes += node.size
        if self._batch_bytes >= self.batch_bytes or len(self._batch) >= self.BATCH_FILES:
            self._flush()

    def _flush(self) -> None:
        """Hand the current batch to the pool (waits while too many are in flight)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._slots.acquire()
        if self._failed is not None:  # stop early: the restore fails anyway
            self._slots.release()
            raise self._failed
        if self._procs is not None:
            try:
                self._procs.wait_ready()
            except ProcsStartError:
                self._procs = None  # restore in threads instead
                self.stats.processes = 0
        if self._procs is not None:
            self._procs.submit(batch, self._job_done, self._job_failed)
        else:
            self._futures.append(self._pool.submit(self._batch_job, batch))

    def _job_done(self, files: int, size: int) -> None:
        with self._lock:
            self.stats.files += files
            self.stats.bytes += size
        self._slots.release()
        if self.progress:
            self.progress(self.stats)

    def _job_failed(self, exc: BaseException) -> None:
        self._failed = self._failed or exc
        self._slots.release()

    def _batch_job(self, batch: list[tuple[str, Node]]) -> None:
        try:
            stream = self._stream(batch)
            size = 0
            for rel, node in batch:
                try:
                    write_file(self._root_fd, rel, node.size, node.mode, node.mtime_ns, len(node.content), stream)
                except OSError as exc:  # the target's disk is full, a folder is read-only...
                    raise local_error(f"{rel}: cannot restore", exc) from exc
                size += node.size
            with self._lock:
                self.stats.files += len(batch)
                self.stats.bytes += size
            if self.progress:
                self.progress(self.stats)
        except BaseException as exc:
            self._failed = self._failed or exc
            raise
        finally:
            self._slots.release()

    def _stream(self, batch: list[tuple[str, Node]]) -> Iterator[bytes | memoryview]:
        """The blobs of ``batch``'s files, reordering the batch (in place) by where each file's
        first blob lies: folders list files by name, packs hold them in the order they were read,
        and reading in pack order lets one request serve several files."""
        if len(batch) == 1:  # a large file: lookups as the stream goes (bounded memory)
            return self.session.load_blobs(batch[0][1].content)
        ids = [b for _, node in batch for b in node.content]
        locs = self.session.locate(ids)
        batch[:], order = pack_order(batch, locs)  # the caller writes the files in this order
        return self.session.load_blobs([ids[j] for j in order], locations=[locs[j] for j in order])

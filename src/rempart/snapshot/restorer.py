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

from rempart.core.errors import DecryptionError, HostilePathError, IntegrityError, UserError
from rempart.repository.reader import ReadSession
from rempart.snapshot.tree import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, check_name, decode_tree

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
HAVE_DIR_FD = os.open in os.supports_dir_fd
HAVE_FCHMOD = hasattr(os, "fchmod")
HAVE_FUTIMES = os.utime in os.supports_fd
HAVE_PWRITE = hasattr(os, "pwrite")
HAVE_PWRITEV = hasattr(os, "pwritev")


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


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
    """Restores files in batches on a small thread pool.

    The walk (main thread) creates folders and symlinks and groups consecutive files into
    batches of about ``BATCH_BYTES``; a worker reads a batch's blobs as one stream, so small files
    stored back to back in a pack cost one read, and writes the files one after the other.
    Decryption, decompression and the file system calls release the GIL, so a few workers keep
    both cores busy while at most ``workers * 2`` batches are in flight (bounded memory).
    """

    BATCH_BYTES = 4 * 1024 * 1024
    BATCH_FILES = 256
    WRITE_BYTES = 1024 * 1024  # gather decoded blobs up to this much per write call

    def __init__(self, session: ReadSession, *, workers: int = 3,
                 progress: Callable[[RestoreStats], None] | None = None) -> None:
        self.session = session
        self.reader = TreeReader(session)
        self.stats = RestoreStats()
        self.progress = progress
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
        self._futures: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(workers * 2)
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

    def restore(self, tree_id: bytes, target: Path, include: list[PurePosixPath] | None = None,
                *, exclude: set[PurePosixPath] | None = None,
                extra: dict[PurePosixPath, Node] | None = None) -> RestoreStats:
        """Restore ``tree_id`` (only ``include`` if given, never ``exclude``), then ``extra``
        nodes (files from other snapshots) at their paths.

        A file that cannot be restored (missing or damaged blob) is removed again and the restore
        raises :class:`IntegrityError` naming it, after the files already under way are done.
        """
        target.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(target, os.O_RDONLY | O_DIRECTORY)
        self._exclude = exclude or set()
        try:
            self._restore_tree(tree_id, "", PurePosixPath("/"), include)
            for path, node in sorted((extra or {}).items()):
                parts = path.parts[1:]
                rel = ""
                for part in parts[:-1]:
                    rel = f"{rel}/{check_name(part)}" if rel else check_name(part)
                    _make_dir(self._root_fd, rel)
                check_name(node.name)
                rel = f"{rel}/{parts[-1]}" if rel else parts[-1]
                self._add_file(rel, node)
            self._flush()
            for f in self._futures:
                f.result()
            # directory modes and mtimes last, deepest first, once their content is written
            for rel, node in reversed(self._dir_times):
                _set_times(node, rel, self._root_fd)
        finally:
            self._pool.shutdown(wait=True)
            os.close(self._root_fd)
        return self.stats

    def _wanted(self, path: PurePosixPath, include: list[PurePosixPath] | None) -> tuple[bool, bool]:
        """(restore this node, descend into it)."""
        if not include:
            return True, True
        for inc in include:
            if path == inc or inc in path.parents:
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
                _make_dir(self._root_fd, child)
                self._dir_times.append((child, node))
                self.stats.dirs += take
                if node.subtree is not None:
                    self._restore_tree(node.subtree, child, p if filtered else path / node.name, include)
            elif not take:
                continue
            elif node.type == KIND_FILE:
                self._add_file(child, node)
            elif node.type == KIND_SYMLINK and node.target is not None:
                _remove_existing(self._root_fd, child)
                os.symlink(node.target, child, dir_fd=self._root_fd)
                _set_times(node, child, self._root_fd)
                self.stats.symlinks += 1
            elif statmod.S_ISFIFO(node.mode) and hasattr(os, "mkfifo"):
                _remove_existing(self._root_fd, child)
                os.mkfifo(child, statmod.S_IMODE(node.mode), dir_fd=self._root_fd)
                _set_times(node, child, self._root_fd)

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
        self._futures.append(self._pool.submit(self._batch_job, batch))

    def _batch_job(self, batch: list[tuple[str, Node]]) -> None:
        try:
            stream = self._stream(batch)
            size = 0
            for rel, node in batch:
                self._write_file(rel, node, stream)
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
        keyed = []
        i = 0
        for rel, node in batch:
            n = len(node.content)
            first = locs[i] if n else None
            keyed.append(((first.pack, first.offset) if first is not None else (b"", -1), i, n, rel, node))
            i += n
        keyed.sort(key=lambda k: (k[0], k[1]))
        batch[:] = [(rel, node) for _, _, _, rel, node in keyed]
        order = [j for _, start, n, _, _ in keyed for j in range(start, start + n)]
        return self.session.load_blobs([ids[j] for j in order], locations=[locs[j] for j in order])

    def _write_file(self, rel: str, node: Node, stream: Iterator[bytes | memoryview]) -> None:
        """Write ``node``'s content, taken from ``stream``; on failure the file is removed."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY | O_CLOEXEC
        try:
            fd = os.open(rel, flags, 0o600, dir_fd=self._root_fd)
        except FileExistsError:
            _remove_existing(self._root_fd, rel)
            fd = os.open(rel, flags, 0o600, dir_fd=self._root_fd)
        done = False
        try:
            pos = start = pending_bytes = 0
            pending: list[bytes | memoryview] = []
            for _ in node.content:
                try:
                    data = next(stream)
                except (IntegrityError, DecryptionError) as exc:
                    raise IntegrityError(f"{rel}: cannot restore: {exc}") from exc
                n = len(data)
                if n and _is_zero(data):  # keep holes sparse: write around zero chunks
                    if pending:
                        _pwrite_all(fd, pending, start)
                        pending, pending_bytes = [], 0
                    pos += n
                    start = pos
                    continue
                pending.append(data)
                pending_bytes += n
                pos += n
                if pending_bytes >= self.WRITE_BYTES or len(pending) >= 64:
                    _pwrite_all(fd, pending, start)
                    pending, pending_bytes, start = [], 0, pos
            if pending:
                _pwrite_all(fd, pending, start)
            if pos != node.size:
                raise IntegrityError(f"{rel}: restored {pos} bytes, expected {node.size}")
            if start == pos and pos:  # ends in a hole: give the file its length
                os.ftruncate(fd, pos)
            if HAVE_FCHMOD:
                os.fchmod(fd, statmod.S_IMODE(node.mode))
            if HAVE_FUTIMES:
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            done = True
        finally:
            os.close(fd)
            if not done:
                try:
                    os.unlink(rel, dir_fd=self._root_fd)
                except OSError:
                    pass
        if not HAVE_FUTIMES:
            _set_times(node, rel, self._root_fd)


def _is_zero(data: bytes | memoryview) -> bool:
    """Whether ``data`` is all zero bytes (first and last byte first: most data fails there)."""
    if data[0] or data[-1]:
        return False
    if not isinstance(data, bytes):
        data = data.tobytes()  # rare: stored blobs are incompressible, hence seldom zero
    return data == bytes(len(data))


def _pwrite_all(fd: int, bufs: list[bytes | memoryview], offset: int) -> None:
    """Write ``bufs`` back to back at ``offset`` (one system call when possible)."""
    if HAVE_PWRITEV and len(bufs) > 1:
        total = sum(len(b) for b in bufs)
        n = os.pwritev(fd, bufs, offset)
        if n == total:
            return
        # short write (rare): finish buffer by buffer
        for b in bufs:
            if n >= len(b):
                n -= len(b)
                offset += len(b)
                continue
            _pwrite_one(fd, memoryview(b)[n:], offset + n)
            offset += len(b)
            n = 0
        return
    for b in bufs:
        _pwrite_one(fd, b, offset)
        offset += len(b)


def _pwrite_one(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    if not HAVE_PWRITE:
        os.lseek(fd, offset, os.SEEK_SET)
    while view:
        n = os.pwrite(fd, view, offset) if HAVE_PWRITE else os.write(fd, view)
        view = view[n:]
        offset += n


def _make_dir(root_fd: int, rel: str) -> None:
    """Create ``rel`` as a real folder; refuse to pass through a symlink in the target."""
    name = rel.rsplit("/", 1)[-1]
    check_name(name)
    try:
        os.mkdir(rel, 0o700, dir_fd=root_fd)
    except FileExistsError:
        st = os.stat(rel, dir_fd=root_fd, follow_symlinks=False)
        if not statmod.S_ISDIR(st.st_mode):
            _remove_existing(root_fd, rel)
            os.mkdir(rel, 0o700, dir_fd=root_fd)
    try:
        fd = os.open(rel, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW, dir_fd=root_fd)
    except OSError as exc:
        raise HostilePathError(f"{rel!r}: not a plain folder in the target (symlink?)") from exc
    os.close(fd)


def _remove_existing(dir_fd: int, name: str) -> None:
    """Replace what stands at ``name`` (a file or symlink; never follows a symlink)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if statmod.S_ISDIR(st.st_mode):
        raise UserError(f"{name!r} exists in the target as a folder; restore into an empty folder")
    os.unlink(name, dir_fd=dir_fd)


def _set_times(node: Node, name: str, dir_fd: int) -> None:
    try:
        if node.type == KIND_DIR:
            os.chmod(name, statmod.S_IMODE(node.mode), dir_fd=dir_fd)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, OSError):
        if node.type != KIND_SYMLINK:
            raise


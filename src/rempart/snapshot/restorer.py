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

from rempart.core.errors import HostilePathError, IntegrityError, UserError
from rempart.repository.reader import ReadSession
from rempart.snapshot.tree import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, check_name, decode_tree

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
HAVE_DIR_FD = os.open in os.supports_dir_fd


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

    def tree(self, tree_id: bytes) -> list[Node]:
        nodes = decode_tree(self.session.load_blob(tree_id))
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
    def __init__(self, session: ReadSession, *, workers: int = 3,
                 progress: Callable[[RestoreStats], None] | None = None) -> None:
        self.session = session
        self.reader = TreeReader(session)
        self.stats = RestoreStats()
        self.progress = progress
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
        self._futures: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(workers * 4)
        self._lock = threading.Lock()
        self._dir_times: list[tuple[str, Node]] = []
        self._root_fd = -1
        self._exclude: set[PurePosixPath] = set()

    def restore(self, tree_id: bytes, target: Path, include: list[PurePosixPath] | None = None,
                *, exclude: set[PurePosixPath] | None = None,
                extra: dict[PurePosixPath, Node] | None = None) -> RestoreStats:
        """Restore ``tree_id`` (only ``include`` if given, never ``exclude``), then ``extra``
        nodes (files from other snapshots) at their paths."""
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
                self._slots.acquire()
                self._futures.append(self._pool.submit(self._file_job, rel, node))
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
        for node in self.reader.tree(tree_id):
            p = path / node.name
            child = f"{rel}/{node.name}" if rel else node.name
            take, descend = self._wanted(p, include)
            if not descend or p in self._exclude:
                continue
            if node.type == KIND_DIR:
                _make_dir(self._root_fd, child)
                self._dir_times.append((child, node))
                self.stats.dirs += take
                if node.subtree is not None:
                    self._restore_tree(node.subtree, child, p, include)
            elif not take:
                continue
            elif node.type == KIND_FILE:
                self._slots.acquire()
                self._futures.append(self._pool.submit(self._file_job, child, node))
            elif node.type == KIND_SYMLINK and node.target is not None:
                _remove_existing(self._root_fd, child)
                os.symlink(node.target, child, dir_fd=self._root_fd)
                _set_times(node, child, self._root_fd)
                self.stats.symlinks += 1
            elif statmod.S_ISFIFO(node.mode) and hasattr(os, "mkfifo"):
                _remove_existing(self._root_fd, child)
                os.mkfifo(child, statmod.S_IMODE(node.mode), dir_fd=self._root_fd)
                _set_times(node, child, self._root_fd)

    def _file_job(self, rel: str, node: Node) -> None:
        try:
            self._write_file(rel, node)
            with self._lock:
                self.stats.files += 1
                self.stats.bytes += node.size
            if self.progress:
                self.progress(self.stats)
        finally:
            self._slots.release()

    def _write_file(self, rel: str, node: Node) -> None:
        _remove_existing(self._root_fd, rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY
        fd = os.open(rel, flags, 0o600, dir_fd=self._root_fd)
        try:
            written = 0
            for data in self.session.load_blobs(node.content):
                if data.count(0) == len(data):
                    os.lseek(fd, len(data), os.SEEK_CUR)  # keep holes sparse
                else:
                    _write_all(fd, data)
                written += len(data)
            if written != node.size:
                raise IntegrityError(f"{rel}: restored {written} bytes, expected {node.size}")
            os.ftruncate(fd, written)
            if hasattr(os, "fchmod"):
                os.fchmod(fd, statmod.S_IMODE(node.mode))
        finally:
            os.close(fd)
        _set_times(node, rel, self._root_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


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


"""The archiver: walks sources, chunks changed files, writes trees and the snapshot.

Pipeline: the walking thread stats entries and consults the state cache; files that must be
read go to a small thread pool that chunks (FastCDC), hashes (keyed BLAKE3), compresses (zstd)
and encrypts (AES-GCM) — all of which release the GIL — while packs upload in the background.
At most ``max_inflight`` files are in flight, so memory does not grow with the file count.
"""

from __future__ import annotations

import fnmatch
import os
import stat as statmod
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rempart.chunking.fastcdc import Chunker
from rempart.repository.format import BlobType
from rempart.repository.repo import WriteSession
from rempart.snapshot.cache import CachedFile, StateCache
from rempart.snapshot.tree import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, encode_tree, kind_of

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


class FileObserver(Protocol):
    """Detection hooks; the agent layer provides one built on rempart.detect."""

    def sample_plan(self, size: int) -> list[tuple[int, int]]: ...

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]: ...

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None: ...


@dataclass(frozen=True)
class BackupOptions:
    workers: int = 2
    max_inflight: int = 16
    #: re-read files whose last full read is older than this many seconds (None: never)
    reread_after: float | None = 7 * 86400
    force_reread: bool = False
    excludes: tuple[str, ...] = ()
    read_retries: int = 2


@dataclass
class BackupStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "warnings"}
        d["warnings"] = len(self.warnings)
        return d


class Archiver:
    def __init__(
        self,
        session: WriteSession,
        cache: StateCache,
        options: BackupOptions,
        *,
        now: float,
        observer: FileObserver | None = None,
        progress: Callable[[BackupStats], None] | None = None,
    ) -> None:
        self.session = session
        self.cache = cache
        self.options = options
        self.now = now
        self.observer = observer
        self.progress = progress
        self.stats = BackupStats()
        self.refs = session.refs  # every blob the snapshot references (owned by the session)
        seed = session.id_key.chunker_seed()
        params = session.repo.config.chunker
        self._local = threading.local()
        self._make_chunker = lambda: Chunker(params, seed)
        self._pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="chunk")
        self._slots = threading.BoundedSemaphore(options.max_inflight)
        self._stats_lock = threading.Lock()

    # --- public -------------------------------------------------------------------------

    def archive(self, paths: list[Path]) -> bytes:
        """Back up ``paths`` (absolute) and return the root tree id."""
        try:
            return self._virtual_dir(Path(os.sep) if os.name != "nt" else Path(""), sorted(set(paths)), 0)
        finally:
            self._pool.shutdown(wait=True)

    # --- trees --------------------------------------------------------------------------

    def _virtual_dir(self, base: Path, paths: list[Path], depth: int) -> bytes:
        """A directory made of the ancestors of the backup paths."""
        groups: dict[str, list[Path]] = {}
        for p in paths:
            parts = p.parts[depth + 1 :] if p.anchor else p.parts[depth:]
            groups.setdefault(parts[0] if parts else "", []).append(p)
        nodes: list[Node] = []
        for name, members in sorted(groups.items()):
            child = base / name
            if any(m == child for m in members):
                node = self._entry(child, name)
                if node is not None:
                    nodes.append(node)
            else:
                st = os.stat(child)
                node = Node(name=name, type=KIND_DIR, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                node.subtree = self._virtual_dir(child, members, depth + 1)
                nodes.append(node)
        return self._save_tree(nodes)

    def _entry(self, path: Path, name: str) -> Node | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._warn(f"{path}: vanished before it could be read")
            return None
        except OSError as exc:
            self._warn(f"{path}: {exc.strerror}")
            return None
        kind = kind_of(st.st_mode)
        node = Node(name=name, type=kind, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
        if kind == KIND_DIR:
            self.stats.dirs += 1
            node.subtree = self._dir(path)
        elif kind == KIND_SYMLINK:
            node.target = os.readlink(path)
        elif kind == KIND_FILE:
            fut = self._file(str(path), st, node, self.cache.lookup(str(path)))
            if fut is not None:
                fut.result()
                if node.type != KIND_FILE:
                    return None
        return node

    def _dir(self, path: Path) -> bytes:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            self._warn(f"{path}: cannot list folder ({exc.strerror})")
            entries = []
        nodes: list[Node] = []
        pending: list[tuple[Node, Future[None]]] = []
        cached = self.cache.lookup_dir(str(path))
        for e in entries:
            if self._excluded(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{e.path}: {exc.strerror}")
                continue
            kind = kind_of(st.st_mode)
            node = Node(name=e.name, type=kind, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
            if kind == KIND_FILE:
                fut = self._file(e.path, st, node, cached.get(e.name))
                if fut is not None:
                    pending.append((node, fut))
                nodes.append(node)
            elif kind == KIND_DIR:
                self.stats.dirs += 1
                node.subtree = self._dir(Path(e.path))
                nodes.append(node)
            elif kind == KIND_SYMLINK:
                try:
                    node.target = os.readlink(e.path)
                except OSError as exc:
                    self._warn(f"{e.path}: {exc.strerror}")
                    continue
                nodes.append(node)
            else:
                nodes.append(node)  # fifos, sockets, devices: recorded, not read
        for _node, fut in pending:
            fut.result()
        nodes = [n for n in nodes if n.type != "skip"]
        self.cache.flush()
        return self._save_tree(nodes)

    def _save_tree(self, nodes: list[Node]) -> bytes:
        for n in nodes:
            self.refs.update(n.content)
            if n.subtree is not None:
                self.refs.add(n.subtree)
        bid, _ = self.session.add_blob(BlobType.TREE, encode_tree(nodes))
        self.refs.add(bid)
        return bid

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) for pat in self.options.excludes)

    # --- files --------------------------------------------------------------------------

    def _file(self, spath: str, st: os.stat_result, node: Node, prev: CachedFile | None) -> Future[None] | None:
        """Fill ``node``; returns a future when the file must be read."""
        self.stats.files += 1
        self.stats.bytes += st.st_size
        node.size = st.st_size
        if prev is not None and self._unchanged(prev, st):
            node.content = prev.content
            node.features_raw = prev.features_raw
            self.stats.files_unchanged += 1
            self.cache.record(spath, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                              prev.content, prev.features_raw, prev.read_at)
            return None
        self._slots.acquire()
        return self._pool.submit(self._read_file, Path(spath), st, node, prev)

    def _unchanged(self, prev: CachedFile, st: os.stat_result) -> bool:
        if self.options.force_reread:
            return False
        if (prev.size, prev.mtime_ns, prev.ctime_ns, prev.inode) != (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        ):
            return False
        if self.options.reread_after is not None and self.now - prev.read_at > self.options.reread_after:
            return False
        return all(c in self.session.repo.index for c in prev.content)

    def _chunker(self) -> Chunker:
        c = getattr(self._local, "chunker", None)
        if c is None:
            c = self._local.chunker = self._make_chunker()
        return c

    def _read_file(self, path: Path, st: os.stat_result, node: Node, prev: CachedFile | None) -> None:
        try:
            for _attempt in range(self.options.read_retries + 1):
                result = self._read_once(path)
                if result is not None:
                    break
            else:
                what = "kept the previous version" if prev else "not backed up"
                self._warn(f"{path}: changed while being read {self.options.read_retries + 1} times; {what}")
                if prev is not None:
                    node.content, node.features_raw, node.size = prev.content, prev.features_raw, prev.size
                    self.cache.record(str(path), prev.size, prev.mtime_ns, prev.ctime_ns, prev.inode,
                                 prev.content, prev.features_raw, prev.read_at)
                else:
                    node.type = "skip"
                return
            content, size, st2, samples = result
            features = self.observer.features(path.name, size, samples) if self.observer else None
            node.content, node.size, node.features = content, size, features
            node.mtime_ns, node.mode = st2.st_mtime_ns, st2.st_mode
            with self._stats_lock:
                self.stats.files_read += 1
                self.stats.bytes_read += size
                if prev is None:
                    self.stats.files_new += 1
                elif prev.content != content:
                    self.stats.files_changed += 1
            if self.observer is not None and features is not None and (prev is None or prev.content != content):
                self.observer.changed(str(path), prev.features if prev else None, features, prev is None)
            self.cache.record(str(path), size, st2.st_mtime_ns, st2.st_ctime_ns, st2.st_ino, content, features, self.now)
        except OSError as exc:
            self._warn(f"{path}: {exc.strerror or exc}")
            node.type = "skip"
        finally:
            self._slots.release()
            if self.progress:
                self.progress(self.stats)

    def _read_once(self, path: Path) -> tuple[list[bytes], int, os.stat_result, list[tuple[int, bytes]]] | None:
        """Read and store one file; None when it changed while being read."""
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st1 = os.fstat(fd)
            if not statmod.S_ISREG(st1.st_mode):
                raise OSError(0, "no longer a regular file")
            plan = self.observer.sample_plan(st1.st_size) if self.observer else []
            samples: list[tuple[int, bytes]] = []
            content: list[bytes] = []
            session = self.session
            offset = 0
            compressible = True
            misses = 0
            for chunk in self._chunker().chunks(f):
                n = len(chunk)
                if plan:
                    _collect(plan, samples, offset, chunk)
                bid = session.blob_id(chunk)
                if not session.known(bid):
                    _, ok = session.add_blob(BlobType.DATA, chunk, bid, compressible=compressible)
                    # stop trying to compress data that does not compress (JPEG, DICOM pixels)
                    misses = 0 if ok else misses + 1
                    compressible = misses < 2 or len(content) % 16 == 0
                content.append(bid)
                offset += n
            st2 = os.fstat(fd)
        if offset != st2.st_size or (st1.st_mtime_ns, st1.st_size) != (st2.st_mtime_ns, st2.st_size):
            return None
        return content, offset, st2, samples

    def _warn(self, message: str) -> None:
        with self._stats_lock:
            self.stats.warnings.append(message)


def _collect(plan: list[tuple[int, int]], out: list[tuple[int, bytes]], offset: int, chunk: memoryview) -> None:
    end = offset + len(chunk)
    for start, length in plan:
        lo, hi = max(start, offset), min(start + length, end)
        if lo < hi:
            if out and out[-1][0] + len(out[-1][1]) == lo and _same_range(plan, out[-1][0], lo):
                out[-1] = (out[-1][0], out[-1][1] + bytes(chunk[lo - offset : hi - offset]))
            else:
                out.append((lo, bytes(chunk[lo - offset : hi - offset])))


def _same_range(plan: list[tuple[int, int]], a: int, b: int) -> bool:
    return any(s <= a and b <= s + n for s, n in plan)

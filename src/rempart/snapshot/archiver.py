"""The archiver: walks sources, chunks changed files, writes trees and the snapshot.

Pipeline: the walking thread stats entries and consults the state cache; files that must be
read go to a small thread pool that chunks (FastCDC), hashes (keyed BLAKE3), compresses (zstd)
and encrypts (AES-GCM) — all of which release the GIL — while packs upload in the background.
At most ``max_inflight`` files (``first_max_inflight`` in a first backup, and ``max_inflight_bytes``
read ahead of them) are in flight, so memory does not grow with the file count.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rempart.chunking.fastcdc import Chunker
from rempart.core.errors import RempartError
from rempart.repository.format import BlobType
from rempart.repository.repo import WriteSession
from rempart.snapshot.cache import CachedFile, StateCache
from rempart.snapshot.options import BackupOptions, BackupStats, FileObserver
from rempart.snapshot.pipeline import ContentReadAhead, Folder, Gate, Lanes, stat_source
from rempart.snapshot.threadread import ThreadReader
from rempart.snapshot.tree import (
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    encode_tree,
    kind_of,
    tree_signature,
)
from rempart.snapshot.wire import ReadOutcome

if TYPE_CHECKING:
    from rempart.snapshot.workers import ReaderPool

# tree.canonical_json's output, with one encoder for the whole run: json.dumps builds a new
# JSONEncoder on every call that passes options (a few microseconds per file sketch)
_features_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


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
        self._thread_reader = ThreadReader(session, observer, lambda: Chunker(params, seed), options.read_retries)
        self._pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="chunk")
        self._stats_lock = threading.Lock()
        self._holds_lock = threading.Lock()
        self._refs_lock = threading.Lock()
        self._error: BaseException | None = None
        self._readers: ReaderPool | None = None
        self._to_read = 0  # bytes handed to reading threads so far
        #: no previous snapshot: every file is read, the reading processes start early and all at once
        self._first_run = cache.get_meta("last_snapshot") is None
        inflight = options.first_max_inflight if self._first_run else options.max_inflight
        self._slots = Gate(inflight, options.max_inflight_bytes)
        self._read_ahead = ContentReadAhead(options.read_ahead)
        #: folders listed, not walked yet: (path, done)
        self._lanes: Lanes[tuple[str, Callable[[bytes | None], None]]] = Lanes()
        #: folders listed whose tree is not saved yet (and the most at once): bounded by the
        #: walk depth plus, per file in flight (``max_inflight``), the folders above it
        self.folders_pending = 0
        self.folders_pending_max = 0
        self.left_out: list[str] = []  # folders of ``options.skip_dirs`` the walk met (left out)

    def archive(self, paths: list[Path]) -> bytes:
        """Back up ``paths`` (absolute) and return the root tree id."""
        root: Future[bytes | None] = Future()
        tree = None
        try:
            self._virtual_dir(Path(os.sep) if os.name != "nt" else Path(""), sorted(set(paths)), 0,
                              root.set_result)
            while (folder := self._lanes.next()) is not None:
                self._dir(*folder)
            tree = root.result()
        finally:
            self._pool.shutdown(wait=True)
            self._read_ahead.close()
            if self._readers is not None:
                if self._error is not None or tree is None:
                    self._readers.kill()
                self._readers.close()
        self._raise_if_failed()
        assert tree is not None
        return tree

    # --- folders ------------------------------------------------------------------------

    def _open_folder(self, path: str, done: Callable[[bytes | None], None]) -> Folder:
        with self._holds_lock:
            self.folders_pending += 1
            self.folders_pending_max = max(self.folders_pending_max, self.folders_pending)
        return Folder(path, done, self.cache.lookup_tree(path))

    def _virtual_dir(self, base: Path, paths: list[Path], depth: int, done: Callable[[bytes | None], None]) -> None:
        """A directory made of the ancestors of the backup paths."""
        groups: dict[str, list[Path]] = {}
        for p in paths:
            parts = p.parts[depth + 1 :] if p.anchor else p.parts[depth:]
            groups.setdefault(parts[0] if parts else "", []).append(p)
        folder = self._open_folder(str(base), done)
        subs: list[tuple[str, Callable[[bytes | None], None]]] = []
        for name, members in sorted(groups.items()):
            child = base / name
            if any(m == child for m in members):
                try:
                    st = stat_source(child)
                except OSError as exc:
                    gone = isinstance(exc, FileNotFoundError)
                    self._warn(f"{child}: {'vanished before it could be read' if gone else exc.strerror}")
                    continue
                self._add_entry(folder, name, str(child), st, self.cache.lookup(str(child)), subs)
            else:
                st = os.stat(child)
                node = Node(name=name, type=KIND_DIR, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                folder.nodes.append(node)
                self._hold(folder)
                self._virtual_dir(child, members, depth + 1, partial(self._subfolder_done, folder, node))
        self._lanes.push(subs)
        self.cache.maybe_flush()
        self._release(folder)

    def _dir(self, path: str, done: Callable[[bytes | None], None]) -> None:
        """List one folder, hand out its files and queue its subfolders (``Lanes``);
        ``done(tree id)`` runs once its tree is saved (maybe later, in another thread)."""
        folder = self._open_folder(path, done)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            self._warn(f"{path}: cannot list folder ({exc.strerror})")
            entries = []
        cached = self.cache.lookup_dir(path)
        excludes = self.options.excludes
        subs: list[tuple[str, Callable[[bytes | None], None]]] = []
        for e in entries:
            if excludes and self._excluded(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{e.path}: {exc.strerror}")
                continue
            self._add_entry(folder, e.name, e.path, st, cached.get(e.name), subs)
        self._lanes.push(subs)
        self.cache.maybe_flush()
        self._release(folder)

    def _add_entry(self, folder: Folder, name: str, path: str, st: os.stat_result, prev: CachedFile | None,
                   subs: list[tuple[str, Callable[[bytes | None], None]]]) -> None:
        self._raise_if_failed()
        kind = kind_of(st.st_mode)
        node = Node(name=name, type=kind, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
        if kind == KIND_FILE:
            self._file(path, st, node, prev, folder)
        elif kind == KIND_DIR:
            if (st.st_dev, st.st_ino) in self.options.skip_dirs:
                self.left_out.append(path)
                return
            self.stats.dirs += 1
            self._hold(folder)
            folder.nodes.append(node)
            subs.append((path, partial(self._subfolder_done, folder, node)))
            return
        elif kind == KIND_SYMLINK:
            try:
                node.target = os.readlink(path)
            except OSError as exc:
                self._warn(f"{path}: {exc.strerror}")
                return
        folder.nodes.append(node)  # files, symlinks; fifos, sockets, devices: recorded, not read

    def _hold(self, folder: Folder) -> None:
        with self._holds_lock:
            folder.holds += 1

    def _subfolder_done(self, parent: Folder, node: Node, tree: bytes | None) -> None:
        if tree is None:
            node.type = "skip"  # only after a failure, which aborts the run
        node.subtree = tree
        self._release(parent)

    def _release(self, folder: Folder) -> None:
        with self._holds_lock:
            folder.holds -= 1
            if folder.holds:
                return
            self.folders_pending -= 1
        tree = None
        try:
            tree = self._save_tree(folder)
        except BaseException as exc:  # re-raised by the walker or by archive()
            self._fail(exc)
        folder.done(tree)

    def _save_tree(self, folder: Folder) -> bytes:
        nodes = [n for n in folder.nodes if n.type != "skip"]
        folder.nodes = []
        sig = tree_signature(nodes)
        prev = folder.prev
        ids: list[bytes] = []  # one update of the reference set per folder, not per file
        for n in nodes:
            if n.content:
                ids.extend(n.content)
            if n.subtree is not None:
                ids.append(n.subtree)
        if prev is not None and prev[0] == sig and (self.session.repo.index.intact or self.session.known(prev[1])):
            bid = prev[1]  # nothing in this folder changed: its tree is the previous one
            with self._stats_lock:
                self.stats.trees_reused += 1
        else:
            bid, _ = self.session.add_blob(BlobType.TREE, encode_tree(nodes))
        ids.append(bid)
        with self._refs_lock:
            self.refs.update(ids)
        self.cache.record_tree(folder.path, sig, bid)
        return bid

    def _fail(self, exc: BaseException) -> None:
        with self._stats_lock:
            if self._error is None:
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) for pat in self.options.excludes)

    # --- files --------------------------------------------------------------------------

    def _file(self, spath: str, st: os.stat_result, node: Node, prev: CachedFile | None, folder: Folder) -> None:
        """Fill ``node`` now, or hand the file to a reading thread (which releases ``folder``)."""
        self.stats.files += 1
        self.stats.bytes += st.st_size
        node.size = st.st_size
        if prev is not None and self._unchanged(prev, st):
            node.content = prev.content
            node.features_raw = prev.features_raw
            self.stats.files_unchanged += 1
            self.cache.record_row(prev)  # same stat, same content
            return
        self._lanes.charge(st.st_size)
        weight = min(st.st_size, self.options.read_ahead)
        self._slots.acquire(weight)
        self._hold(folder)
        try:
            self._read_ahead.advise(spath)
            if self._use_processes(st.st_size):
                assert self._readers is not None
                plan = self.observer.sample_plan(st.st_size) if self.observer else []
                self._readers.submit(spath, st.st_size, plan, self.options.read_retries,
                                     (spath, node, prev, folder, weight))
            else:
                self._to_read += st.st_size
                self._pool.submit(self._read_file, spath, st, node, prev, folder, weight)
        except BaseException:
            self._slots.release(weight)
            self._release(folder)
            raise

    def _use_processes(self, size: int) -> bool:
        if self._readers is not None:
            return True
        after = self.options.process_after
        if self._first_run:
            after = min(after, self.options.first_process_after)
        if not self.options.processes or self._to_read + size <= after:
            return False
        from rempart.snapshot.workers import ReaderPool, ReaderStartError  # subprocess etc.: only when needed

        setup = self.session.reader_setup()
        setup["features"] = getattr(self.observer, "worker_features", None) or ""
        try:
            # a first backup reads everything: every process at once; a later run reads what
            # changed: one process (and its buffers), more once files queue up for it
            start = None if self._first_run else 1
            self._readers = ReaderPool(self.options.workers, setup, self.session.claim, self.session.add_pack,
                                       self._read_done, spare=max(1, self.session.max_inflight - 1), start=start)
        except ReaderStartError as exc:
            self._warn(str(exc))
            self.options = replace(self.options, processes=False)
            return False
        return True

    def _read_done(self, context: Any, outcome: ReadOutcome) -> None:
        """A reading process finished (or lost) a file."""
        spath, node, prev, folder, weight = context
        self._complete(spath, node, prev, folder, weight, outcome)

    def _unchanged(self, prev: CachedFile, st: os.stat_result) -> bool:
        if self.options.force_reread:
            return False
        if (prev.size != st.st_size or prev.mtime_ns != st.st_mtime_ns or prev.ctime_ns != st.st_ctime_ns
                or prev.inode != st.st_ino):
            return False
        if self.options.reread_after is not None and self.now - prev.read_at > self.options.reread_after:
            return False
        index = self.session.repo.index
        # while no pack has gone since the last snapshot, its blobs are all still there
        return index.intact or index.contains_all(prev.content)

    def _read_file(self, spath: str, st: os.stat_result, node: Node, prev: CachedFile | None, folder: Folder,
                   weight: int) -> None:
        """Read one file in this thread (small runs, and runs without reading processes)."""
        self._complete(spath, node, prev, folder, weight, self._thread_reader.read(spath))

    def _complete(self, spath: str, node: Node, prev: CachedFile | None, folder: Folder, weight: int,
                  out: ReadOutcome) -> None:
        """Record what reading ``spath`` gave (in the reading thread, or in the thread that
        receives a reading process's results), then let its folder go on."""
        try:
            if out.kind == "changed":
                what = "kept the previous version" if prev else "not backed up"
                self._warn(f"{spath}: changed while being read {self.options.read_retries + 1} times; {what}")
                if prev is not None:
                    node.content, node.features_raw, node.size = prev.content, prev.features_raw, prev.size
                    self.cache.record_row(prev)
                else:
                    node.type = "skip"
            elif out.kind == "oserror":
                self._warn(f"{spath}: {out.message}")
                node.type = "skip"
            elif out.kind != "ok":
                node.type = "skip"
                self._fail(out.error or RempartError(f"{spath}: {out.message}"))
            else:
                self._record_read(spath, node, prev, out)
        except OSError as exc:
            self._warn(f"{spath}: {exc.strerror or exc}")
            node.type = "skip"
        except BaseException as exc:  # re-raised by the walker or by archive()
            node.type = "skip"
            self._fail(exc)
        finally:
            self._slots.release(weight)
            if self.progress:
                try:
                    self.progress(self.stats)
                except BaseException as exc:
                    self._fail(exc)
            self._release(folder)

    def _record_read(self, spath: str, node: Node, prev: CachedFile | None, out: ReadOutcome) -> None:
        content, size = out.content or [], out.size
        features: dict[str, Any] | None = None
        if out.features_raw is not None:  # computed by a reading process; parsed when needed
            raw = out.features_raw or None
        else:
            name = os.path.basename(spath)
            features = self.observer.features(name, size, out.samples or []) if self.observer else None
            raw = _features_json(features) if features else None  # serialised once: node and cache row
        node.content, node.size, node.features, node.features_raw = content, size, features, raw
        node.mtime_ns, node.mode = out.mtime_ns, out.mode
        with self._stats_lock:
            self.stats.files_read += 1
            self.stats.bytes_read += size
            if prev is None:
                self.stats.files_new += 1
            elif prev.content != content:
                self.stats.files_changed += 1
        if self.observer is not None and (raw or features is not None) and (prev is None or prev.content != content):
            if prev is None and out.judged_raw is not None:
                self.observer.judged_new(spath, out.judged_raw)  # most files of a first backup
            else:
                if features is None:
                    features = json.loads(raw or "{}")
                self.observer.changed(spath, prev.features if prev else None, features, prev is None)
        self.cache.record(spath, size, out.mtime_ns, out.ctime_ns, out.inode, content, raw, self.now)

    def _warn(self, message: str) -> None:
        with self._stats_lock:
            self.stats.warn(message)

"""The backup pipeline: no per-folder barrier, tree-id reuse for unchanged folders, bounded
pending folders, failures that propagate, capped warnings, the one-copy blob seal."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.pagecache import resident_pages

from rempart.crypto.aead import DataKey
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.blobs import FLAG_RAW, FLAG_ZSTD, aad, open_blob, seal_blob
from rempart.repository.config import CONFIG, new_config
from rempart.repository.format import BlobType
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.archiver import Archiver
from rempart.snapshot.cache import StateCache
from rempart.snapshot.options import MAX_WARNINGS, BackupOptions, BackupStats
from rempart.snapshot.tree import decode_tree
from rempart.storage.memory import MemoryBackend

OLD_NS = 1_600_000_000_000_000_000


class Rig:
    """A repository in memory and helpers to archive a folder with a given state cache."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.priv, self.idk = RecoveryPrivateKey.generate(), IdKey.generate()
        self.backend = MemoryBackend()
        self.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", self.priv, self.idk).to_bytes())
        self.runs = 0
        self.refs_count = 0

    def archive(self, src: Path, state: Path, observer: Any = None, **opts: Any) -> tuple[bytes, Archiver, WriteSession]:
        self.runs += 1
        repo = Repository.open(self.backend)
        repo.load_index()
        cache = StateCache(state)
        session = WriteSession(repo, self.idk)
        try:
            archiver = Archiver(session, cache, BackupOptions(**opts), now=time.time(), observer=observer)
            root = archiver.archive([src])
            session.flush()
            self.refs_count = len(session.refs)  # (the session's reference set closes with it)
            cache.commit(f"run{self.runs}")
        finally:
            session.close()
            cache.close()
        return root, archiver, session

    def fresh(self, src: Path) -> bytes:
        """The root tree id of a run that trusts nothing cached (new state, every file read)."""
        root, archiver, _ = self.archive(src, self.tmp / f"fresh{self.runs}", force_reread=True)
        assert archiver.stats.trees_reused == 0
        return root

    def reader(self) -> ReadSession:
        repo = Repository.open(self.backend)
        repo.load_index()
        return ReadSession(repo, self.priv, self.idk)

    def subtree(self, root: bytes, src: Path) -> bytes:
        """The tree id of ``src`` in the snapshot whose root tree is ``root``. (Compare these,
        not roots: the root also records the mtimes of /tmp and the other ancestors, which
        other processes change at any time.)"""
        reader = self.reader()
        for part in src.parts[1:]:
            (node,) = [n for n in decode_tree(reader.load_blob(root)) if n.name == part]
            assert node.subtree is not None
            root = node.subtree
        return root

    def listing(self, root: bytes, src: Path) -> dict[str, tuple[Any, ...]]:
        """Every entry under ``src`` in the snapshot whose root tree is ``root``, by relative path."""
        tree = self.subtree(root, src)
        reader = self.reader()
        out: dict[str, tuple[Any, ...]] = {}

        def walk(tid: bytes, pre: str) -> None:
            for n in decode_tree(reader.load_blob(tid)):
                out[pre + n.name] = (n.type, n.mode, n.mtime_ns, n.size, n.target,
                                     b"".join(reader.load_blob(c) for c in n.content))
                if n.subtree is not None:
                    walk(n.subtree, pre + n.name + "/")

        walk(tree, "")
        return out


def make_practice(root: Path) -> None:
    """Folders of one file (like X-rays, one patient per folder), a busy folder, nesting."""
    for year in ("2024", "2025"):
        for p in range(6):
            d = root / "xrays" / year / f"patient-{p:03d}"
            d.mkdir(parents=True)
            (d / "pano.dcm").write_bytes(os.urandom(40_000 + 997 * p))
    docs = root / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"letter-{i}.txt").write_text(f"Dear patient {i},\n" * (50 + i))
    (root / "db").mkdir()
    (root / "db" / "practice.db").write_bytes(os.urandom(300_000))
    (root / "empty").mkdir()
    os.symlink("docs/letter-1.txt", root / "link")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    (tmp_path / "rig").mkdir()  # state folders go here, never beside the source (its parents'
    return Rig(tmp_path / "rig")  # mtimes are part of the backed-up trees)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "data" / "src"
    s.mkdir(parents=True)
    make_practice(s)
    return s


def test_trees_are_the_same_whatever_the_scheduling(rig: Rig, src: Path) -> None:
    serial, _, _ = rig.archive(src, rig.tmp / "s1", workers=1, max_inflight=1, first_max_inflight=1)
    parallel, _, _ = rig.archive(src, rig.tmp / "s2", workers=2, max_inflight=16, first_max_inflight=16)
    wide, _, _ = rig.archive(src, rig.tmp / "s3", workers=3, max_inflight=2, first_max_inflight=2)
    assert rig.subtree(serial, src) == rig.subtree(parallel, src) == rig.subtree(wide, src)
    listing = rig.listing(serial, src)
    assert listing["xrays/2025/patient-005/pano.dcm"][5] == (src / "xrays/2025/patient-005/pano.dcm").read_bytes()
    assert listing["docs/letter-29.txt"][5] == (src / "docs/letter-29.txt").read_bytes()
    assert listing["link"][4] == "docs/letter-1.txt"
    assert listing["empty"][0] == "dir"


def test_unchanged_folders_reuse_their_tree_without_storing_one(rig: Rig, src: Path) -> None:
    state = rig.tmp / "state"
    first, a1, _ = rig.archive(src, state)
    refs_first = rig.refs_count
    second, a2, session = rig.archive(src, state)
    assert rig.subtree(second, src) == rig.subtree(first, src)
    assert a2.stats.files_unchanged == a2.stats.files and a2.stats.files_read == 0
    # every folder under src, and src itself (its ancestors too unless someone touched /tmp)
    assert a2.stats.trees_reused >= a1.stats.dirs + 1
    assert session.stats["blobs_new"] <= len(src.parts) - 1  # at most the ancestors' trees
    assert rig.refs_count == refs_first  # the snapshot still references every blob


def _same_size_new_content_old_mtime(src: Path) -> None:
    f = src / "xrays/2024/patient-003/pano.dcm"
    st = f.stat()
    f.write_bytes(os.urandom(st.st_size))  # what ransomware that restores mtimes does
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def _add(src: Path) -> None:
    (src / "docs" / "new.txt").write_text("new letter")


def _remove(src: Path) -> None:
    (src / "docs" / "letter-7.txt").unlink()


def _rename(src: Path) -> None:
    os.rename(src / "docs" / "letter-7.txt", src / "docs" / "letter-7-renamed.txt")


def _chmod(src: Path) -> None:
    os.chmod(src / "db" / "practice.db", 0o600)


def _subfolder_mtime(src: Path) -> None:
    os.utime(src / "xrays" / "2025" / "patient-002", ns=(OLD_NS, OLD_NS))


def _deep_subfolder_changes(src: Path) -> None:
    shutil.rmtree(src / "xrays" / "2025" / "patient-004")


def _symlink_target(src: Path) -> None:
    (src / "link").unlink()
    os.symlink("docs/letter-2.txt", src / "link")


def _folder_becomes_file(src: Path) -> None:
    shutil.rmtree(src / "empty")
    (src / "empty").write_text("now a file")


MUTATIONS: dict[str, Callable[[Path], None]] = {
    "content-same-size-restored-mtime": _same_size_new_content_old_mtime,
    "file-added": _add,
    "file-removed": _remove,
    "file-renamed": _rename,
    "mode-changed": _chmod,
    "subfolder-mtime": _subfolder_mtime,
    "subfolder-removed": _deep_subfolder_changes,
    "symlink-retargeted": _symlink_target,
    "folder-replaced-by-file": _folder_becomes_file,
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_tree_reuse_follows_every_change(rig: Rig, src: Path, mutation: str) -> None:
    state = rig.tmp / "state"
    before, _, _ = rig.archive(src, state)
    MUTATIONS[mutation](src)
    after, archiver, _ = rig.archive(src, state)  # reuses what it can
    assert rig.subtree(after, src) != rig.subtree(before, src)
    # exactly the trees of a run that reuses nothing
    assert rig.subtree(after, src) == rig.subtree(rig.fresh(src), src)
    assert archiver.stats.trees_reused > 0  # the untouched folders were not re-encoded
    listing = rig.listing(after, src)
    for rel, entry in listing.items():
        p = src / rel
        assert entry[1] == p.lstat().st_mode and entry[2] == p.lstat().st_mtime_ns, rel
        if entry[0] == "file":
            assert entry[5] == p.read_bytes(), rel
    assert len(listing) == sum(len(d) + len(f) for _, d, f in os.walk(src))


def test_reuse_requires_the_tree_blob_to_exist(rig: Rig, src: Path) -> None:
    """A state cache that names a tree the repository no longer has must not be trusted."""
    state = rig.tmp / "state"
    rig.archive(src, state)
    rig.backend = MemoryBackend()  # the repository was lost / replaced; the state cache was not
    rig.backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", rig.priv, rig.idk).to_bytes())
    root, archiver, _ = rig.archive(src, state)
    assert archiver.stats.trees_reused == 0
    assert rig.listing(root, src)["docs/letter-3.txt"][5] == (src / "docs/letter-3.txt").read_bytes()


def test_pending_folders_stay_bounded(rig: Rig, tmp_path: Path) -> None:
    src = tmp_path / "data" / "many"
    for i in range(300):
        d = src / f"p{i // 30}" / f"patient-{i}"
        d.mkdir(parents=True)
        (d / "x.dcm").write_bytes(os.urandom(20_000))
    _, archiver, _ = rig.archive(src, rig.tmp / "state", workers=2, max_inflight=4, first_max_inflight=4)
    assert archiver.stats.files == 300 and archiver.folders_pending == 0
    # each file in flight keeps at most its folder chain pending (depth 4 here), not the 311 folders
    assert archiver.folders_pending_max <= 4 * (4 + 1)


class _Boom:
    def sample_plan(self, size: int) -> list[tuple[int, int]]:
        return []

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]:
        if name == "pano.dcm":
            raise RuntimeError("detector crashed")
        return {}

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None:
        pass


def test_a_failure_in_a_reading_thread_fails_the_run_without_hanging(rig: Rig, src: Path) -> None:
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(rig.archive(src, rig.tmp / "state", observer=_Boom())[0])
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "archive() hung after a worker failure"
    assert isinstance(outcome[0], RuntimeError) and "detector crashed" in str(outcome[0])


def test_warnings_are_capped_but_counted() -> None:
    stats = BackupStats()
    for i in range(MAX_WARNINGS + 250):
        stats.warn(f"file {i}: unreadable")
    assert len(stats.warnings) == MAX_WARNINGS
    assert stats.warnings[0] == "file 0: unreadable" and stats.warnings[-1] == f"file {MAX_WARNINGS - 1}: unreadable"
    assert stats.warning_count == MAX_WARNINGS + 250
    assert stats.to_dict()["warnings"] == MAX_WARNINGS + 250


def test_unreadable_files_warn_and_are_left_out(rig: Rig, tmp_path: Path) -> None:
    src = tmp_path / "data" / "w"
    src.mkdir(parents=True)
    (src / "ok.txt").write_text("fine")
    os.mkfifo(src / "pipe")  # recorded, never read
    os.symlink("/nonexistent", src / "dangling")
    bad = src / "gone"
    bad.mkdir()
    root, archiver, _ = rig.archive(src, rig.tmp / "state")
    assert archiver.stats.warning_count == 0
    assert set(rig.listing(root, src)) == {"ok.txt", "pipe", "dangling", "gone"}


@pytest.mark.parametrize("flag", [FLAG_RAW, FLAG_ZSTD])
@pytest.mark.parametrize("size", [0, 1, 65_536, 300_001])
def test_one_copy_seal_is_ordinary_aes_gcm(flag: int, size: int) -> None:
    key = DataKey.generate()
    bid = os.urandom(32)
    payload = memoryview(bytearray(os.urandom(size + 7)))[3 : 3 + size]  # a view, as chunks are
    sealed = seal_blob(key, BlobType.DATA, bid, flag, payload)
    assert len(sealed) == 12 + 1 + size + 16
    assert key.open(sealed, aad(BlobType.DATA, bid)) == bytes([flag]) + bytes(payload)
    assert bytes(payload) == bytes(payload.obj[3 : 3 + size])  # type: ignore[index]  # input untouched
    if flag == FLAG_RAW:
        assert open_blob(key, BlobType.DATA, bid, bytes(sealed)) == bytes(payload)
    with pytest.raises(Exception):
        open_blob(key, BlobType.TREE, bid, bytes(sealed))  # bound to its type


def test_metadata_read_ahead_visits_every_entry_once_and_stops(src: Path, tmp_path: Path) -> None:
    from rempart.snapshot.pipeline import MetadataReadAhead

    total = sum(len(d) + len(f) for _, d, f in os.walk(src))
    ra = MetadataReadAhead([src, tmp_path / "missing"]).start()
    ra.join(30)
    assert ra.visited == total
    capped = MetadataReadAhead([src], max_entries=5).start()
    capped.join(30)
    assert capped.visited == 5
    stopped = MetadataReadAhead([src])
    stopped.stop()
    stopped.start().join(30)
    assert stopped.visited == 0


def test_the_gate_bounds_files_and_bytes_in_flight_and_lets_one_large_file_through() -> None:
    from rempart.snapshot.pipeline import Gate

    gate = Gate(100, max_bytes=1000)
    for _ in range(3):
        gate.acquire(300)  # 900 bytes in flight
    entered = threading.Event()

    def walker() -> None:
        gate.acquire(300)  # 1200 > 1000: waits until half the bytes are free
        entered.set()

    t = threading.Thread(target=walker, daemon=True)
    t.start()
    assert not entered.wait(0.3)
    gate.release(300)  # 600 left: still more than half
    assert not entered.wait(0.3)
    gate.release(300)  # 300 left
    assert entered.wait(5)
    t.join(5)
    for _ in range(2):
        gate.release(300)
    gate.acquire(5000)  # alone, a file heavier than the bound still goes
    gate.release(5000)
    counted = Gate(2)
    counted.acquire()
    counted.acquire()
    blocked = threading.Thread(target=counted.acquire, daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # the file count bounds too
    counted.release()
    blocked.join(5)
    assert not blocked.is_alive()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or sys.platform != "linux", reason="Linux page cache")
def test_content_read_ahead_brings_the_first_bytes_of_files_into_the_page_cache(tmp_path: Path) -> None:
    """The archiver asks the kernel for the first bytes of files it has handed out, so a reader
    finds them in memory (cold: 2 GiB practice folder 18.3 -> 16.0 s). Only the first
    ``max_bytes`` are asked for, and a FIFO put where a file was is skipped without blocking."""
    import mmap

    from rempart.snapshot.pipeline import ContentReadAhead

    f = tmp_path / "xray.dcm"
    f.write_bytes(os.urandom(4 << 20))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped from the cache
    finally:
        os.close(fd)
    if resident_pages(f) > 16:
        pytest.skip("this filesystem keeps the file in memory (tmpfs)")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    ra = ContentReadAhead(1 << 20)
    ra.advise(str(fifo))  # would block an ordinary open for reading
    ra.advise(str(tmp_path / "gone"))
    ra.advise(str(f))
    done = threading.Thread(target=ra.close, daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive(), "the read-ahead blocked"
    deadline = time.monotonic() + 5
    while resident_pages(f) < (1 << 20) // mmap.PAGESIZE and time.monotonic() < deadline:  # the reads finish in the kernel
        time.sleep(0.05)
    resident = resident_pages(f)
    first, whole = (1 << 20) // mmap.PAGESIZE, (4 << 20) // mmap.PAGESIZE
    assert first <= resident < whole // 2, resident  # the first MiB, not the whole file


def test_block_reader_cuts_exactly_where_fastcdc_cut_stream_does() -> None:
    """Same chunks as pyfastcdc's own stream reader (dedup with older snapshots depends on it),
    at every boundary of the 2 MiB read blocks and of the chunk sizes."""
    import io
    import random

    from rempart.chunking.fastcdc import READ_SIZE, Chunker, ChunkerParams

    p = ChunkerParams()
    chunker = Chunker(p, 1234)
    rnd = random.Random(5)
    sizes = [0, 1, p.min_size, p.max_size, p.max_size + 1, READ_SIZE - 1, READ_SIZE, READ_SIZE + p.max_size,
             READ_SIZE + p.max_size + 1, 2 * READ_SIZE + 12_345, 3 * (READ_SIZE + p.max_size)]
    for size in sizes:
        mixed = b"".join(rnd.randbytes(rnd.randint(1, 90_000)) + bytes(rnd.randint(1, 400_000))
                         for _ in range(size // 100_000 + 1))[:size]
        for data in (rnd.randbytes(size), bytes(size), mixed):
            expected = [bytes(c.data) for c in chunker._cdc.cut_stream(io.BytesIO(data))]
            got = [bytes(c) for c in chunker.chunks(io.BytesIO(data))]  # the same chunker, reused
            assert got == expected, size


def _walk_lanes(tree: dict[str, Any], files: dict[str, list[int]]) -> list[str]:
    """List folders as the archiver does: each listed folder queues its subfolders and charges
    the sizes of its files; returns the order in which folders were listed."""
    from rempart.snapshot.pipeline import Lanes

    lanes: Lanes[str] = Lanes()
    order = []
    lanes.push(sorted(p for p in tree if "/" not in p))
    while (path := lanes.next()) is not None:
        order.append(path)
        for size in files.get(path, []):
            lanes.charge(size)
        lanes.push(sorted(p for p in tree if "/" in p and p.rsplit("/", 1)[0] == path))
    return order


def test_lanes_walk_every_folder_once_depth_first_within_a_lane() -> None:
    from rempart.snapshot.pipeline import Lanes

    lanes: Lanes[str] = Lanes()
    lanes.push(["a"])
    assert lanes.next() == "a"
    lanes.push(["a/x", "a/y"])  # two waiting: the second lane takes the shallowest, last one
    assert lanes.next() == "a/x"
    lanes.push(["a/x/1"])
    order = ["a", "a/x"]
    while (p := lanes.next()) is not None:
        order.append(p)
    assert sorted(order) == ["a", "a/x", "a/x/1", "a/y"] and len(order) == 4


def test_lanes_interleave_small_file_folders_with_large_file_folders() -> None:
    """Documents (many small files) then X-rays (few large ones), as in a practice folder: the
    walk alternates between them instead of finishing the documents first."""
    tree: dict[str, Any] = {"Documents": {}, "Imaging": {}}
    files: dict[str, list[int]] = {}
    for i in range(10):
        tree[f"Documents/{i:02d}"] = {}
        files[f"Documents/{i:02d}"] = [15_000] * 1000  # 1000 letters of 15 kB
        tree[f"Imaging/{i:02d}"] = {}
        files[f"Imaging/{i:02d}"] = [8_000_000] * 10  # 10 X-rays of 8 MB
    order = _walk_lanes(tree, files)
    assert sorted(order) == sorted(tree) and len(order) == len(tree)
    kinds = [p.split("/")[0] for p in order if "/" in p]
    first_imaging = kinds.index("Imaging")
    assert first_imaging < 3  # not after the ten document folders
    switches = sum(1 for a, b in itertools.pairwise(kinds) if a != b)
    assert switches >= 10  # they take turns all along

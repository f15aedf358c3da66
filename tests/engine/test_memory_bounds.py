"""Bounded memory (issue 2 "Scale", issue 6 "bounded memory whatever the number of files").

Measured with tracemalloc in a process of its own (the Python heap: every Python object, bytes
buffer and list; SQLite's and zstd's own C allocations are not in it and are capped by their
settings).
The same backup of N and of 4N small files must peak at the same height while it walks: what
the engine keeps per file (index entries of uploaded packs, references, state rows) lives on
disk or in bounded batches. Packs are small (32 KiB: little noise from buffers in flight, a few
MB of fixed buffers: chunker read buffers) and the blob index's fixed 4 MiB Bloom filter is
built before measuring. Run to run the walk peak varies by ~30 KB here; the bound allows 40
bytes per extra file (300 KB), less than one Python bytes object holding a 32-byte id (65 B).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import random
import tracemalloc
from pathlib import Path

import pytest

from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.config import CONFIG, new_config
from rempart.repository.format import parse_snapshot
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.archiver import Archiver
from rempart.snapshot.cache import StateCache
from rempart.snapshot.options import BackupOptions
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend

PACK_SIZE = 32 * 1024  # 4N files: ~70 packs, 5 index files
N = 2500


def _make_files(root: Path, count: int) -> None:
    rng = random.Random(count)
    for i in range(count):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(rng.randbytes(rng.randint(100, 300)))


def _backup(tmp: Path, count: int) -> tuple[int, int, int]:
    """(Python heap peak while walking and uploading, extra peak while committing the
    snapshot, number of references), both peaks above the heap in use before the step."""
    src = tmp / f"src{count}"
    _make_files(src, count)
    backend = LocalBackend(tmp / f"repo{count}", create=True)
    backend.save(CONFIG, new_config("2026-01-01T00:00:00Z", RecoveryPrivateKey.generate(), IdKey.generate(),
                                    pack_size=PACK_SIZE).to_bytes())
    idk = IdKey.generate()
    repo = Repository.open(backend)
    cache = StateCache(tmp / f"state{count}")
    session = WriteSession(repo, idk)
    try:
        # files in flight, at most: a constant, but how many are in flight at the peak depends
        # on how far the walk runs ahead of the readers (timing); 16 of ~7 KB each stay far
        # below the bound below, the 256 of a first backup's default (~1.8 MB) do not
        options = BackupOptions(max_inflight=16, first_max_inflight=16)
        archiver = Archiver(session, cache, options, now=0.0)
        repo.index.build_filter()  # the fixed-size Bloom filter, built now: not measured
        assert bytes(32) not in repo.index
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tree = archiver.archive([src])
            session.flush()
            walk_peak = tracemalloc.get_traced_memory()[1] - base
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            name = session.commit({"v": 1, "tree": tree.hex()}, archiver.refs, {})
            commit_peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        refs = len(parse_snapshot(backend.load(Handle(FileType.SNAPSHOT, name))).refs)
    finally:
        session.close()
        cache.close()
        repo.close()
    assert archiver.stats.files == count
    return walk_peak, commit_peak, refs


def _backup_alone(tmp: Path, count: int) -> tuple[int, int, int]:
    """``_backup`` in a process of its own: tracemalloc counts every thread's allocations, and a
    test run before this one in the same process (pytest-xdist runs many in each worker) may
    leave a thread that allocates meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_backup, tmp, count).result()


@pytest.mark.slow
def test_python_heap_peak_is_the_same_for_n_and_4n_files(tmp_path: Path) -> None:
    walk_n, commit_n, refs_n = _backup_alone(tmp_path, N)
    walk_4n, commit_4n, refs_4n = _backup_alone(tmp_path, 4 * N)
    assert refs_4n > 4 * N > refs_n > N  # one content blob per file, plus the trees
    # the walk: flat; anything kept per file (even one 32-byte id as bytes) fails this
    assert walk_4n - walk_n <= 40 * 3 * N, (walk_n, walk_4n)
    # the commit holds the snapshot file once (32 bytes per reference) and nothing else per
    # reference: no list of ids, no second copy of the buffer
    per_ref = 32 * refs_4n
    assert commit_4n <= 1.25 * per_ref + 256 * 1024, (commit_4n, per_ref)
    assert commit_4n - commit_n <= 1.25 * 32 * (refs_4n - refs_n) + 64 * 1024, (commit_n, commit_4n)

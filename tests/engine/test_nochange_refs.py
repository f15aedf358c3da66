"""What a backup with nothing changed costs in the blob index and the reference set: the
reference set's external merge sort (runs written to temporary files, merged level by level)
gives every id once in order, and a few lookups are answered without building the Bloom
filter, with the same answers as after it is built."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rempart.repository.format import BlobType, PackEntry, encode_snapshot_prefix, parse_snapshot
from rempart.repository.index import DIRECT_LOOKUPS, BlobIndex
from rempart.repository.refset import RefSet


def _small_refset(run_ids: int, fan_in: int) -> RefSet:
    rs = RefSet()
    rs.run_ids, rs.fan_in, rs.read_ids = run_ids, fan_in, 2
    return rs


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=120), st.integers(1, 5), st.integers(2, 4),
       st.integers(1, 9))
def test_refset_merges_runs_into_sorted_unique_ids(ids: list[bytes], run_ids: int, fan_in: int, batch: int) -> None:
    rs = _small_refset(run_ids, fan_in)
    ids = ids + ids[::3]  # duplicates within a run and across runs
    for k in range(0, len(ids), batch):
        rs.update(ids[k : k + batch])
    assert list(rs) == sorted(set(ids))
    assert list(rs) == sorted(set(ids))  # iterating again gives the same
    assert len(rs) == len(set(ids))
    env = b"\0" * 89
    assert encode_snapshot_prefix({"v": 1, "tree": "00" * 32}, rs, env) == \
        encode_snapshot_prefix({"v": 1, "tree": "00" * 32}, sorted(set(ids)), env)
    rs.close()


def test_refset_keeps_few_ids_in_memory_and_spills_levels() -> None:
    rng = random.Random(7)
    ids = [rng.randbytes(32) for _ in range(5000)]
    rs = _small_refset(64, 4)
    for k in range(0, len(ids), 10):
        rs.update(ids[k : k + 10] + ids[k : k + 2])
        assert len(rs._buf) < 32 * 64  # never more than one run's ids in memory
        assert all(len(level) < 4 for level in rs._levels)  # full levels were merged
    assert len(rs._levels) >= 3
    assert list(rs) == sorted(set(ids))
    rs.close()
    with pytest.raises(ValueError, match="closed"):
        list(rs)


def test_refset_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rs = _small_refset(8, 2)
    rs.update(os.urandom(32) for _ in range(500))
    assert rs._levels and not list(tmp_path.iterdir())  # unlinked from the start
    assert len(list(rs)) == 500
    rs.close()


def test_refset_refuses_ids_of_the_wrong_length() -> None:
    rs = RefSet()
    with pytest.raises(ValueError, match="32 bytes"):
        rs.update([b"\x01" * 31])
    rs.update([b"\x02" * 32])
    assert list(rs) == [b"\x02" * 32]
    rs.close()


def test_refset_snapshot_round_trip_beyond_one_run() -> None:
    rs = RefSet()
    ids = [os.urandom(32) for _ in range(3 * rs.run_ids + 17)]
    rs.update(ids)
    rs.update(ids[:100])
    snap = parse_snapshot(bytes(encode_snapshot_prefix({"v": 1, "tree": "00" * 32}, rs, b"\0" * 89)) + b"\0" * 28)
    assert list(snap.refs) == sorted(set(ids))
    rs.close()


def test_few_lookups_need_no_bloom_filter_and_answer_the_same(tmp_path: Path) -> None:
    idx = BlobIndex(tmp_path / "index.sqlite", repo_id="r")
    known = [os.urandom(32) for _ in range(300)]
    idx.add_pack(b"\xaa" * 32, [PackEntry(BlobType.DATA, b, 16 * i, 16) for i, b in enumerate(known)])
    unknown = [os.urandom(32) for _ in range(50)]
    assert all(b in idx for b in known[:20]) and not any(b in idx for b in unknown[:20])
    assert idx.contains_all(known[:30]) and not idx.contains_all([*known[:5], unknown[0]])
    assert idx._bloom is None  # a no-change run's handful of tree lookups builds nothing
    later = os.urandom(32)
    idx.add_pack(b"\xbb" * 32, [PackEntry(BlobType.TREE, later, 0, 16)])
    assert later in idx  # added after the first lookups: still found
    for _ in range(DIRECT_LOOKUPS):
        assert unknown[1] not in idx
    assert idx._bloom is not None  # many lookups: the filter is built and used from then on
    assert all(b in idx for b in [*known, later]) and not any(b in idx for b in unknown)
    assert idx.contains_all([*known, later]) and not idx.contains_all([*known, unknown[2]])
    idx.close()

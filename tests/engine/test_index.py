"""The on-disk blob index and reference set (bounded memory) and the persisted index cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rempart.core.errors import RepositoryError
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.config import CONFIG, new_config
from rempart.repository.format import (
    BlobType,
    PackEntry,
    encode_index,
    encode_index_pack,
    encode_snapshot_prefix,
    join_index,
    parse_index,
    parse_snapshot,
)
from rempart.repository.index import BlobIndex
from rempart.repository.refset import RefSet
from rempart.repository.repo import Repository, WriteSession
from rempart.storage.base import FileType, Handle
from rempart.storage.memory import MemoryBackend
from rempart.storage.wrappers import FaultyBackend


def _repo_with_blobs(n: int) -> tuple[MemoryBackend, IdKey, list[bytes]]:
    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk).to_bytes())
    w = WriteSession(Repository.open(mem), idk)
    ids = [w.add_blob(BlobType.DATA, os.urandom(3000))[0] for _ in range(n)]
    w.flush()
    w.close()
    return mem, idk, ids


def test_index_lookups_and_first_location_wins() -> None:
    idx = BlobIndex(repo_id="r")
    a, b = b"\x01" * 32, b"\x02" * 32
    idx.add_pack(b"\xaa" * 32, [PackEntry(BlobType.DATA, a, 0, 10), PackEntry(BlobType.TREE, b, 10, 5)])
    idx.add_pack(b"\xbb" * 32, [PackEntry(BlobType.DATA, a, 0, 99)])  # duplicate blob: ignored
    assert len(idx) == 2 and a in idx and b"\x03" * 32 not in idx
    loc = idx.get(b)
    assert loc is not None and (loc.pack, loc.type, loc.offset, loc.length) == (b"\xaa" * 32, BlobType.TREE, 10, 5)
    assert idx.get(a).length == 10  # type: ignore[union-attr]
    assert idx.contains_all([a, b]) and not idx.contains_all([a, b"\x03" * 32])
    many = idx.get_many([b, a, b"\x03" * 32, b])
    assert set(many) == {a, b} and many[b] == loc and many[a].length == 10
    assert [k for k, _ in idx.items()] == [a, b]
    assert idx.retain_packs({b"\xbb" * 32}) == 1  # pack aa was collected
    assert a not in idx and b not in idx and idx.has_pack(b"\xbb" * 32)


def test_persisted_index_downloads_only_new_index_files(tmp_path: Path) -> None:
    mem, _idk, ids = _repo_with_blobs(40)
    cache = tmp_path / "index.sqlite"
    counted = FaultyBackend(mem)
    repo = Repository.open(counted)
    repo.use_index_cache(cache)
    repo.load_index()
    assert all(i in repo.index for i in ids)
    first_loads = counted.calls.get("load", 0)
    assert first_loads >= 1
    repo.close()

    again = FaultyBackend(mem)
    repo2 = Repository.open(again)
    repo2.use_index_cache(cache)
    before = again.calls.get("load", 0)
    repo2.load_index()
    assert again.calls.get("load", 0) == before  # nothing new: no index file, no pack header read
    assert all(i in repo2.index for i in ids)

    # a pack removed from storage (garbage collection) is forgotten at the next load
    pack = next(iter(mem.list(FileType.DATA)))
    mem.remove(Handle(FileType.DATA, pack.name))
    repo2.load_index()
    gone = [i for i in ids if i not in repo2.index]
    assert gone and all(repo2.index.get(i).pack != bytes.fromhex(pack.name) for i in ids if i in repo2.index)  # type: ignore[union-attr]
    repo2.close()


def test_index_files_from_compact_sections_list_every_pack_header() -> None:
    """The write session keeps 41-byte index sections per blob, not PackEntry objects; the
    index files it writes (every INDEX_EVERY_PACKS packs, then at flush) still list exactly
    each pack's header entries, and the encoding equals the one-shot encode_index."""
    pid = b"\x07" * 32
    es = [PackEntry(BlobType.DATA, bytes([i]) * 32, i * 100, 100) for i in range(5)]
    assert join_index([encode_index_pack(pid, es)]) == encode_index([(pid, es)])
    assert list(parse_index(join_index([]))) == []

    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk, pack_size=8192).to_bytes())
    repo = Repository.open(mem)
    w = WriteSession(repo, idk)
    for _ in range(120):  # ~3 blobs per pack: about 40 packs, so several index files
        w.add_blob(BlobType.DATA, os.urandom(3000), compressible=False)
    w.flush()
    w.close()
    listed: dict[bytes, list[PackEntry]] = {}
    index_files = list(mem.list(FileType.INDEX))
    assert len(index_files) >= 3
    for fi in index_files:
        for p, entries in parse_index(mem.load(Handle(FileType.INDEX, fi.name))):
            assert p not in listed
            listed[p] = entries
    packs = list(mem.list(FileType.DATA))
    assert len(packs) > 16 and set(listed) == {bytes.fromhex(fi.name) for fi in packs}
    for fi in packs:
        assert listed[bytes.fromhex(fi.name)] == list(repo.read_pack_header(fi.name, fi.size).entries)
    assert sum(len(e) for e in listed.values()) == 120


def test_damaged_index_cache_is_rebuilt_and_other_repo_refused(tmp_path: Path) -> None:
    cache = tmp_path / "index.sqlite"
    cache.write_bytes(b"this is not a database" * 100)
    idx = BlobIndex(cache, repo_id="r1")
    idx.add_pack(b"\xaa" * 32, [PackEntry(BlobType.DATA, b"\x01" * 32, 0, 10)])
    idx.close()
    assert b"\x01" * 32 in BlobIndex(cache, repo_id="r1")
    with pytest.raises(RepositoryError, match="another repository"):
        BlobIndex(cache, repo_id="r2")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200))
def test_refset_sorted_unique_and_snapshot_encoding(ids: list[bytes]) -> None:
    rs = RefSet()
    rs.update(ids)
    for i in ids[:5]:
        rs.add(i)
    assert list(rs) == sorted(set(ids)) and len(rs) == len(set(ids))
    env = b"\0" * 89
    plain = {"v": 1, "tree": "00" * 32}
    streamed = encode_snapshot_prefix(plain, rs, env)
    assert streamed == encode_snapshot_prefix(plain, ids, env)  # unsorted input is sorted
    snap = parse_snapshot(streamed + b"\0" * 28)
    assert list(snap.refs) == sorted(set(ids))
    rs.close()


def test_refset_iterates_in_batches_beyond_one_page() -> None:
    rs = RefSet()
    ids = [os.urandom(32) for _ in range(20_000)]
    rs.update(ids)
    assert list(rs) == sorted(ids)


def test_intact_flag_persists_and_clears_when_a_pack_goes(tmp_path: Path) -> None:
    """Unchanged files skip per-blob lookups only while no pack has been forgotten since the
    last committed snapshot; a new or rebuilt cache is never intact."""
    mem, _idk, _ids = _repo_with_blobs(10)
    cache = tmp_path / "index.sqlite"
    repo = Repository.open(mem)
    repo.use_index_cache(cache)
    repo.load_index()
    assert not repo.index.intact  # fresh cache
    repo.index.mark_intact()
    repo.close()
    repo = Repository.open(mem)
    repo.use_index_cache(cache)
    repo.load_index()
    assert repo.index.intact  # nothing went away
    pack = next(iter(mem.list(FileType.DATA)))
    mem.remove(Handle(FileType.DATA, pack.name))
    repo.load_index()
    assert not repo.index.intact
    repo.close()
    repo = Repository.open(mem)
    repo.use_index_cache(cache)
    assert not repo.index.intact  # persisted
    repo.index.mark_intact()
    repo.index.clear()
    assert not repo.index.intact


def test_bloom_never_hides_an_indexed_blob() -> None:
    idx = BlobIndex(repo_id="r")
    ids = [os.urandom(32) for _ in range(5000)]
    idx.add_pack(b"\xaa" * 32, [PackEntry(BlobType.DATA, i, 0, 1) for i in ids])
    assert all(i in idx for i in ids) and idx.contains_all(ids + ids[:3])
    assert not any(os.urandom(32) in idx for _ in range(5000))
    assert not idx.contains_all([*ids[:10], os.urandom(32)])


def test_the_bloom_filter_grows_with_the_index_and_never_hides_a_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    from rempart.repository import index as index_mod

    monkeypatch.setattr(index_mod._Bloom, "MIN_BITS", 1 << 10)  # room for 64 ids before it grows
    idx = BlobIndex(repo_id="r")
    first = [os.urandom(32) for _ in range(3000)]
    idx.add_pack(b"\xaa" * 32, [PackEntry(BlobType.DATA, i, 0, 1) for i in first])
    idx.build_filter()
    small = idx._bloom
    assert small is not None and small.capacity >= 6000  # sized for twice what the index holds
    later: list[bytes] = []
    for p in range(40):  # 12,000 more ids, pack after pack: past its capacity, it is rebuilt larger
        ids = [os.urandom(32) for _ in range(300)]
        later += ids
        idx.add_pack(bytes([p]) * 32, [PackEntry(BlobType.DATA, i, 0, 1) for i in ids])
    grown = idx._bloom
    assert grown is not None and grown is not small and grown.capacity >= 15000
    assert all(i in idx for i in first + later) and idx.contains_all(first + later)
    assert sum(os.urandom(32) in grown for _ in range(20000)) < 200  # under 1 % false positives
    assert len(small._bits) < len(grown._bits) < (1 << 25) >> 3  # not the largest size for 15k ids


def test_backup_after_a_pack_vanished_re_uploads_what_it_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The persisted index says 'intact' after a backup; when a pack then disappears from the
    repository, the next backup must not trust the state cache for the files it held."""
    from rempart.cli.main import main

    for k, v in {"REMPART_KIT_PASSPHRASE": "correct horse battery", "REMPART_KDF_TEST": "1",
                 "REMPART_STATE_DIR": str(tmp_path / "state"), "REMPART_REPOSITORY": str(tmp_path / "repo")}.items():
        monkeypatch.setenv(k, v)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(30_000))
    kit = tmp_path / "kit.json"
    assert main(["init", "--kit", str(kit)]) == 0
    assert main(["backup", "--no-detect", str(src)]) == 0
    packs = sorted((tmp_path / "repo" / "data").rglob("*"))
    victim = next(p for p in packs if p.is_file())
    victim.chmod(0o600)
    victim.unlink()  # what a (wrong) garbage collection or a storage loss would do
    capsys.readouterr()
    assert main(["--json", "backup", "--no-detect", str(src)]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["files_read"] == 20 and stats["files_unchanged"] == 0, stats
    out = tmp_path / "out"
    assert main(["restore", "latest", "--target", str(out), "--kit", str(kit)]) == 0
    restored = out / src.relative_to("/")
    assert all((restored / f"f{i}.bin").read_bytes() == (src / f"f{i}.bin").read_bytes() for i in range(20))


def test_blob_stored_twice_is_located_in_the_copy_that_still_exists() -> None:
    """Two runs that did not know of each other stored the same blob in packs X and Y; X is
    then lost. Whatever order the index files are read in, the blob must be found in Y."""
    for _ in range(6):  # index file names are hashes: both reading orders occur
        mem = MemoryBackend()
        priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
        mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk).to_bytes())
        blob = os.urandom(3000)
        packs = []
        for _run in range(2):
            w = WriteSession(Repository.open(mem), idk)  # a fresh, empty index each time
            bid, _ = w.add_blob(BlobType.DATA, blob)
            w.flush()
            w.close()
            packs.append({fi.name for fi in mem.list(FileType.DATA)} - set(packs[0] if packs else set()))
        (x,), (y,) = packs
        mem.remove(Handle(FileType.DATA, x))
        repo = Repository.open(mem)
        repo.load_index()
        loc = repo.index.get(bid)
        assert loc is not None and loc.pack.hex() == y


def test_index_cache_commits_per_batch_and_a_failed_run_leaves_it_usable(tmp_path: Path) -> None:
    """Packs join the persisted cache in one transaction per batch (a commit per pack rewrote
    most b-tree pages every time); a run that fails mid-batch still commits what it stored, and
    leaves no transaction open that would lock the cache for the next run."""
    import time

    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk, pack_size=8192).to_bytes())
    faulty = FaultyBackend(mem)
    repo = Repository.open(faulty)
    cache = tmp_path / "index.sqlite"
    repo.use_index_cache(cache)
    commits: list[str] = []
    repo.index._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    w = WriteSession(repo, idk)
    stored = [w.add_blob(BlobType.DATA, os.urandom(3000), compressible=False)[0] for _ in range(15)]
    deadline = time.monotonic() + 30
    while w.stats["packs"] < 4 and time.monotonic() < deadline:  # full packs, stored by the upload thread
        time.sleep(0.01)
    assert w.stats["packs"] >= 4 and commits == []  # fewer than INDEX_EVERY_PACKS: not committed yet
    indexed = [b for b in stored if b in repo.index]  # visible to this run at once
    assert len(indexed) >= 9
    faulty.fail("save", times=1000)  # the storage goes away
    with pytest.raises(Exception, match="injected failure"):
        for _ in range(30):
            w.add_blob(BlobType.DATA, os.urandom(3000), compressible=False)
        w.flush()
    w.close()
    assert commits  # committed at close, although the run failed

    other = BlobIndex(cache, repo_id=repo.config.id)  # the next run: not locked
    other.add_pack(b"\xcc" * 32, [PackEntry(BlobType.DATA, b"\x05" * 32, 0, 10)])
    assert all(b in other for b in indexed) and b"\x05" * 32 in other
    other.close()
    repo.close()


def test_index_cache_commits_once_per_sixteen_packs() -> None:
    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk, pack_size=8192).to_bytes())
    repo = Repository.open(mem)
    commits: list[str] = []
    repo.index._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    w = WriteSession(repo, idk)
    for _ in range(120):  # about 40 packs
        w.add_blob(BlobType.DATA, os.urandom(3000), compressible=False)
    w.flush()
    w.close()
    packs = len(list(mem.list(FileType.DATA)))
    assert packs >= 35
    assert len(commits) <= packs // 16 + 3  # per batch, at flush and at close; not per pack


def test_index_file_with_an_unknown_blob_type_is_refused() -> None:
    from rempart.core.errors import IntegrityError

    pid = b"\x07" * 32
    good = encode_index([(pid, [PackEntry(BlobType.DATA, b"\x05" * 32, 0, 100)])])
    assert [e.type for _, es in parse_index(good) for e in es] == [BlobType.DATA]
    at = good.index(b"\x05" * 32) - 1  # the entry's type byte, just before its id
    bad = good[:at] + b"\x07" + good[at + 1 :]
    with pytest.raises(IntegrityError, match="malformed"):
        list(parse_index(bad))

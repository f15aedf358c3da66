"""The read-only packed index of reading commands (rempart.repository.packed) answers every
lookup as the SQLite index does, loaded by the same rules (Repository.load_packed_index)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from rempart.core.errors import IntegrityError
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.repository.config import CONFIG, new_config
from rempart.repository.format import BlobType, PackEntry, encode_index
from rempart.repository.index import BlobIndex
from rempart.repository.packed import PackedIndexBuilder
from rempart.repository.repo import Repository, WriteSession
from rempart.storage.base import FileType, Handle
from rempart.storage.memory import MemoryBackend

# ids crowded into a few two-byte prefixes (the binary search within one prefix), and
# repeated across packs (the first pack listed wins)
_ids = st.builds(lambda p, rest: p + rest, st.sampled_from([b"\x00\x00", b"\x00\x01", b"\xff\xff", b"\x12\x34"]),
                 st.binary(min_size=30, max_size=30))
_entry = st.builds(PackEntry, st.sampled_from(list(BlobType)), _ids, st.integers(0, 2**32 - 1),
                   st.integers(0, 2**32 - 1))
_packs = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.lists(_entry, max_size=12)),
                  max_size=8, unique_by=lambda p: p[0])


@settings(max_examples=150, deadline=None)
@given(_packs, st.lists(_ids, max_size=10), st.booleans())
def test_lookups_equal_the_sqlite_index(packs: list[tuple[bytes, list[PackEntry]]], others: list[bytes],
                                        as_files: bool) -> None:
    sql = BlobIndex(repo_id="r")
    builder = PackedIndexBuilder()
    for pack_id, entries in packs:
        sql.add_pack(pack_id, entries)
        if as_files:  # from an index file, or from a pack header
            builder.add_index_file(encode_index([(pack_id, entries)]))
        else:
            builder.add_pack(pack_id, entries)
    packed = builder.build()
    listed = [e.id for _, entries in packs for e in entries]
    for bid in listed + others + [b"", b"\x00" * 31]:
        assert packed.get(bid) == sql.get(bid), bid.hex()
        assert (bid in packed) == (sql.get(bid) is not None)
    assert packed.get_many(listed + others) == sql.get_many(listed + others)
    for pack_id, entries in packs:
        if entries:  # where the pack's blobs end: its header (every blob listed, kept or not)
            assert packed.pack_end(pack_id) == max(e.offset + e.length for e in entries)
    assert packed.pack_end(os.urandom(32)) is None


def test_a_malformed_index_file_is_refused_whole() -> None:
    pack = os.urandom(32)
    good = encode_index([(pack, [PackEntry(BlobType.DATA, os.urandom(32), 0, 10)])])
    bad_type = bytearray(good)
    bad_type[9 + 36] = 9  # the first entry's type byte: no such blob type
    builder = PackedIndexBuilder()
    for data in (bytes(bad_type), good[:-3], good + b"x", b"junk"):
        try:
            builder.add_index_file(data)
        except IntegrityError:
            continue
        raise AssertionError(f"accepted {data[:12]!r}")
    assert not builder.has_pack(pack) and len(builder.build()) == 0


def test_load_packed_index_locates_every_blob_and_skips_vanished_packs() -> None:
    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk, pack_size=8192).to_bytes())
    w = WriteSession(Repository.open(mem), idk)
    ids = [w.add_blob(BlobType.DATA, os.urandom(3000))[0] for _ in range(40)]
    w.flush()
    w.close()
    packed = Repository.open(mem)
    assert packed.load_packed_index() == 0  # every pack named by an index file
    assert all(packed.locations.get(i) is not None for i in ids)
    assert isinstance(packed.index, BlobIndex) and len(packed.index) == 0  # the SQLite one is unused

    # a pack gone (garbage collection) is not located, though an index file still names it
    gone = next(iter(mem.list(FileType.DATA))).name
    mem.remove(Handle(FileType.DATA, gone))
    for index_files in ("kept", "removed"):  # then packs no index file names (a killed backup)
        if index_files == "removed":
            for fi in list(mem.list(FileType.INDEX)):
                mem.remove(Handle(FileType.INDEX, fi.name))
        survivors, sql = Repository.open(mem), Repository.open(mem)
        scanned = survivors.load_packed_index()
        assert scanned == sql.load_index()
        assert scanned == (0 if index_files == "kept" else len(list(mem.list(FileType.DATA))))
        found = survivors.locations.get_many(ids)
        assert found == sql.index.get_many(ids)
        assert 0 < len(found) < len(ids) and all(loc.pack.hex() != gone for loc in found.values())

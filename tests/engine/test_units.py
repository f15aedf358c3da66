"""Unit tests of the engine's building blocks: keys, kit, formats, chunking, blobs."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rempart.chunking.fastcdc import Chunker, ChunkerParams
from rempart.core.errors import DecryptionError, IntegrityError, WrongPassphrase
from rempart.crypto.aead import DataKey
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.crypto.kit import TEST_KDF, RecoveryKit, decrypt_kit, encrypt_kit, to_printable
from rempart.repository.blobs import compress, open_blob, seal_blob
from rempart.repository.format import (
    BlobType,
    PackEntry,
    encode_index,
    encode_snapshot_prefix,
    parse_index,
    parse_pack_header,
    parse_snapshot,
)
from rempart.repository.packer import Packer


def test_envelope_round_trip_and_wrong_key() -> None:
    priv = RecoveryPrivateKey.generate()
    k = DataKey.generate()
    env = priv.public.wrap(k)
    assert priv.unwrap(env).raw == k.raw
    with pytest.raises(DecryptionError):
        RecoveryPrivateKey.generate().unwrap(env)
    tampered = bytearray(env)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        RecoveryPrivateKey(priv.raw).unwrap(bytes(tampered))


def test_kit_round_trip_printable_and_wrong_passphrase() -> None:
    kit = RecoveryKit("ab" * 16, RecoveryPrivateKey.generate(), IdKey.generate())
    data = encrypt_kit(kit, "a long passphrase", TEST_KDF)
    assert kit.private_key.raw not in data and kit.id_key.raw not in data
    for form in (data, to_printable(data).encode()):
        back = decrypt_kit(form, "a long passphrase")
        assert back.private_key.raw == kit.private_key.raw and back.id_key.raw == kit.id_key.raw
    with pytest.raises(WrongPassphrase):
        decrypt_kit(data, "another passphrase")
    with pytest.raises(IntegrityError):
        decrypt_kit(b"{not a kit", "x" * 10)
    assert "secret" in repr(kit) and kit.private_key.raw.hex() not in repr(kit)


def test_printable_kit_points_at_the_line_with_a_typo() -> None:
    """A kit retyped from paper: each line's check group names the line with a typo, line
    numbers a missing line, the last line's check missing lines at the end; 0, 1 and 8 (not in
    base32) read as O, I and B, and case does not matter. The first form (no check groups) still
    reads."""
    import base64

    from rempart.crypto.kit import BEGIN, END

    kit = RecoveryKit("cd" * 16, RecoveryPrivateKey.generate(), IdKey.generate())
    data = encrypt_kit(kit, "a long passphrase", TEST_KDF)
    lines = to_printable(data).splitlines()
    assert lines[0] == BEGIN and lines[-1] == END and len(lines) > 6
    assert lines[1].startswith("01 ") and lines[1].rsplit("|", 1)[1].strip().isalnum()

    def read(rows: list[str]) -> RecoveryKit:
        return decrypt_kit("\n".join(rows).encode(), "a long passphrase")

    typo = list(lines)
    typo[3] = typo[3][:5] + ("A" if typo[3][5] != "A" else "B") + typo[3][6:]
    with pytest.raises(IntegrityError, match="line 3 has a typo"):
        read(typo)
    with pytest.raises(IntegrityError, match="line 4 is missing or out of order"):
        read(lines[:4] + lines[5:])
    with pytest.raises(IntegrityError, match=f"the lines after line {len(lines) - 3} are missing"):
        read(lines[:-2] + lines[-1:])
    sloppy = [lines[0]] + [row.lower().translate(str.maketrans("oib", "018")) for row in lines[1:-1]] + [lines[-1]]
    assert read(sloppy).id_key.raw == kit.id_key.raw
    b32 = base64.b32encode(data).decode().rstrip("=")
    first_form = [BEGIN] + [b32[i : i + 48] for i in range(0, len(b32), 48)] + [END]
    assert read(first_form).private_key.raw == kit.private_key.raw


def test_default_kdf_is_memory_hard() -> None:
    from rempart.crypto.kit import DEFAULT_KDF

    assert DEFAULT_KDF["name"] == "argon2id" and int(DEFAULT_KDF["memory_kib"]) >= 65536


def test_blob_binds_type_and_id() -> None:
    k = DataKey.generate()
    bid = os.urandom(32)
    sealed = seal_blob(k, BlobType.DATA, bid, *compress(b"hello " * 100, 3))
    assert open_blob(k, BlobType.DATA, bid, sealed) == b"hello " * 100
    with pytest.raises(DecryptionError):
        open_blob(k, BlobType.TREE, bid, sealed)
    with pytest.raises(DecryptionError):
        open_blob(k, BlobType.DATA, os.urandom(32), sealed)


def test_incompressible_data_is_stored_raw() -> None:
    flag, payload = compress(os.urandom(100_000), 3)
    assert flag == 0 and len(payload) == 100_000
    flag, payload = compress(b"a" * 100_000, 3)
    assert flag == 1 and len(payload) < 1000


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=3000), min_size=0, max_size=20))
def test_pack_round_trip(blobs: list[bytes]) -> None:
    priv = RecoveryPrivateKey.generate()
    k = DataKey.generate()
    p = Packer(k, priv.public.wrap(k))
    ids = []
    for b in blobs:
        bid = os.urandom(32)
        ids.append(bid)
        p.add(BlobType.DATA, bid, seal_blob(k, BlobType.DATA, bid, *compress(b, 3)))
    _name, data, _entries = p.finish()
    h = parse_pack_header(data, len(data))
    assert [e.id for e in h.entries] == ids
    key = priv.unwrap(h.envelope)
    key.open(h.gmac, h.authenticated)  # header authenticity
    for e, b in zip(h.entries, blobs, strict=True):
        assert open_blob(key, e.type, e.id, data[e.offset : e.offset + e.length]) == b
    tampered = bytearray(data)
    tampered[-40] ^= 1  # inside the header entries
    try:
        h2 = parse_pack_header(bytes(tampered), len(tampered))
    except IntegrityError:
        return
    with pytest.raises(DecryptionError):
        key.open(h2.gmac, h2.authenticated)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_reject_garbage_cleanly(junk: bytes) -> None:
    for parse in (lambda d: parse_pack_header(d, len(d)), parse_snapshot, lambda d: list(parse_index(d))):
        try:
            parse(junk)
        except IntegrityError:
            pass


def test_index_and_snapshot_round_trip() -> None:
    entries = [PackEntry(BlobType.DATA, os.urandom(32), 0, 10), PackEntry(BlobType.TREE, os.urandom(32), 10, 5)]
    pid = os.urandom(32)
    assert list(parse_index(encode_index([(pid, entries)]))) == [(pid, entries)]
    refs = {os.urandom(32) for _ in range(5)}
    prefix = encode_snapshot_prefix({"tree": "00" * 32, "v": 1}, refs, b"e" * 89)
    snap = parse_snapshot(prefix + b"m" * 40)
    assert set(snap.refs) == refs and snap.plain["v"] == 1


def test_chunking_is_content_defined_and_keyed() -> None:
    params = ChunkerParams()
    data = os.urandom(3_000_000)
    a = Chunker(params, 1234)
    base = [bytes(c) for c in a.chunks_of(data)]
    shifted = [bytes(c) for c in a.chunks_of(b"inserted!" + data)]
    assert b"".join(base) == data
    assert len(set(base) & set(shifted)) >= len(base) - 2  # an insertion re-uses almost all chunks
    other_seed = [bytes(c) for c in Chunker(params, 99).chunks_of(data)]
    assert set(other_seed) != set(base)  # boundaries depend on the id key
    sizes = [len(c) for c in base[:-1]]
    assert min(sizes) >= params.min_size and max(sizes) <= params.max_size
    assert 40_000 < sum(sizes) / len(sizes) < 120_000


def test_chunk_blocks_with_overlap_cut_the_same_and_keep_the_last_block_valid() -> None:
    import io

    params = ChunkerParams()
    data = os.urandom(7_500_000)  # several 2 MiB blocks, a chunk carried over each time
    expected = [bytes(c) for c in Chunker(params, 7).chunks_of(data)]
    plain = [bytes(c) for batch in Chunker(params, 7).batches(io.BytesIO(data)) for c in batch]
    assert plain == expected
    chunker = Chunker(params, 7)
    seen: list[bytes] = []
    last: list[memoryview] | None = None
    blocks = 0
    for batch in chunker.batches(io.BytesIO(data), overlap=True):
        if last is not None:  # the previous block, read after the next one was: still intact
            seen += [bytes(c) for c in last]
        last = batch
        blocks += 1
    assert last is not None
    seen += [bytes(c) for c in last]
    assert blocks >= 3 and seen == expected
    # without overlap the previous block's views are overwritten by the next read
    single = Chunker(params, 7)
    it = single.batches(io.BytesIO(data))
    first = next(it)
    copy = [bytes(c) for c in first]
    next(it)
    assert [bytes(c) for c in first] != copy


def test_the_last_block_of_a_file_stays_valid_while_the_next_file_starts() -> None:
    """A reading process stores a large file's last block only once the next file's first
    block is read and hashed: with overlap, a call's first block never lands in the buffer
    holding the last block of the call before, whatever the parity of their block counts."""
    import io

    params = ChunkerParams()
    chunker = Chunker(params, 7)
    for sizes in ((300_000, 2_500_000), (2_500_000, 300_000), (3_700_000, 3_700_000), (1_200_000, 1_200_000)):
        files = [os.urandom(n) for n in sizes]
        *_, last = chunker.batches(io.BytesIO(files[0]), overlap=True)
        kept = [bytes(c) for c in last]
        first = next(iter(chunker.batches(io.BytesIO(files[1]), overlap=True)))
        assert [bytes(c) for c in last] == kept  # still the first file's bytes
        assert b"".join(bytes(c) for c in first) == files[1][: sum(len(c) for c in first)]


def test_chunker_sizes_pyfastcdc_refuses_are_a_config_error_not_a_crash() -> None:
    """A repository config names its chunker sizes; sizes the compiled chunker would refuse
    (its average below its minimum) fail as ConfigError when the config is read, before any
    process tries to cut with them."""
    from rempart.core.errors import ConfigError

    with pytest.raises(ConfigError, match="max\\(256, avg - min\\)"):
        ChunkerParams(min_size=1024, avg_size=1100, max_size=4096)
    ok = ChunkerParams(min_size=64, avg_size=320, max_size=1024)
    assert Chunker(ok, 1) is not None


def test_blob_id_is_keyed() -> None:
    a, b = IdKey.generate(), IdKey.generate()
    assert a.blob_id(b"x") != b.blob_id(b"x") and a.blob_id(b"x") == a.blob_id(b"x")


def test_read_session_fetches_each_pack_once() -> None:
    from rempart.repository.config import CONFIG, new_config
    from rempart.repository.reader import ReadSession
    from rempart.repository.repo import Repository, WriteSession
    from rempart.storage.memory import MemoryBackend
    from rempart.storage.wrappers import FaultyBackend

    mem = MemoryBackend()
    priv, idk = RecoveryPrivateKey.generate(), IdKey.generate()
    mem.save(CONFIG, new_config("2026-01-01T00:00:00Z", priv, idk).to_bytes())
    w = WriteSession(Repository.open(mem), idk)
    blobs = [os.urandom(5000) for _ in range(50)]
    ids = [w.add_blob(BlobType.DATA, b)[0] for b in blobs]
    w.flush()
    w.close()
    counted = FaultyBackend(mem)
    repo = Repository.open(counted)
    repo.load_index()
    loads_before = counted.calls.get("load", 0)
    session = ReadSession(repo, priv, idk)
    assert list(session.load_blobs([*ids, ids[-1], ids[-1]], verify=True)) == [*blobs, blobs[-1], blobs[-1]]
    assert counted.calls["load"] - loads_before <= 3  # one run, the pack header for the key: not 50 reads
    # every other blob: with max_gap the gaps are stepped over (one read), without it 25 reads
    gappy = ReadSession(repo, priv, idk, max_gap=5100, readahead=2)
    before = counted.calls["load"]
    assert list(gappy.load_blobs(ids[::2], verify=True)) == blobs[::2]
    assert counted.calls["load"] - before <= 3
    before = counted.calls["load"]
    assert list(session.load_blobs(ids[::2], verify=True)) == blobs[::2]
    assert counted.calls["load"] - before >= 25


_NAMES = st.one_of(st.text(max_size=20), st.binary(max_size=20).map(os.fsdecode))  # undecodable: surrogates


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, kind=st.sampled_from(["file", "dir", "symlink", "other", "skip"]),
       mode=st.integers(0, 2**32), mtime=st.integers(-(2**63), 2**63), size=st.integers(0, 2**60),
       content=st.lists(st.binary(min_size=32, max_size=32), max_size=4),
       subtree=st.none() | st.binary(min_size=32, max_size=32), target=st.none() | _NAMES,
       feats=st.none() | st.dictionaries(st.sampled_from(["t", "s", "h", "ok", "e"]),
                                          st.integers(-5, 5) | st.booleans() | st.text(max_size=5)))
def test_tree_nodes_are_written_exactly_as_their_sorted_key_json(name: str, kind: str, mode: int, mtime: int,
                                                                 size: int, content: list[bytes],
                                                                 subtree: bytes | None, target: str | None,
                                                                 feats: dict[str, object] | None) -> None:
    """Tree ids must not change with the encoder: each node is the canonical (sorted-key,
    ASCII-escaped) JSON of its dict, with the features appended last."""
    import json

    from rempart.snapshot.tree import Node, _node_json, canonical_json

    n = Node(name=name, type=kind, mode=mode, mtime_ns=mtime, size=size, content=content, subtree=subtree,
             target=target, features=feats)
    d = n.to_dict()
    d.pop("features", None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    want = f'{text[:-1]},"features":{canonical_json(feats)}}}' if feats else text
    assert _node_json(n) == want


def test_tree_bytes_same_whether_features_come_parsed_or_raw() -> None:
    """Unchanged files carry their cached sketch unparsed; the tree (and its id) must not change."""
    from rempart.snapshot.tree import Node, canonical_json, decode_tree, encode_tree

    feats = {"t": "pdf", "s": 1234, "h": [1, 2, 3], "ok": True}
    a = Node(name="f.pdf", type="file", mode=0o644, mtime_ns=5, size=1234, content=[b"\1" * 32], features=feats)
    b = Node(name="f.pdf", type="file", mode=0o644, mtime_ns=5, size=1234, content=[b"\1" * 32],
             features_raw=canonical_json(feats))
    assert encode_tree([a]) == encode_tree([b])
    assert decode_tree(encode_tree([b]))[0].features == feats

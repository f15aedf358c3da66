"""Byte-level formats of packs, snapshots and index files: the parts readable without a key.

All integers are little-endian. See docs/design.md for the full description.

Pack::

    blob*  header  header_len:u32  b"RMPK"
    header = b"RMPH" version:u8 envelope(89) count:u32 entry*count gmac_nonce(12) gmac_tag(16)
    entry  = type:u8 id(32) length:u32          (blobs are stored back to back, in entry order)

Snapshot::

    b"RMSN" version:u8 plain_len:u32 plain_json  ref_count:u32 ref_id(32)*ref_count (sorted)
    envelope(89)  sealed_meta (nonce || AES-GCM(meta_json, aad = every preceding byte))

Index file::

    b"RMIX" version:u8 pack_count:u32 (pack_id(32) count:u32 (type:u8 id(32) offset:u32 length:u32)*count)*
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rempart.core.errors import IntegrityError

ENVELOPE_LEN = 89  # rempart.crypto.keys.ENVELOPE_LEN, repeated here so the vault needs no crypto
GMAC_LEN = 12 + 16
PACK_MAGIC = b"RMPK"
HEADER_MAGIC = b"RMPH"
SNAP_MAGIC = b"RMSN"
INDEX_MAGIC = b"RMIX"
VERSION = 1
_ENTRY = struct.Struct("<B32sI")
_IDX_ENTRY = struct.Struct("<B32sII")
MAX_BLOBS_PER_PACK = 1 << 20
MAX_PLAIN_JSON = 1 << 20


class BlobType(enum.IntEnum):
    DATA = 0
    TREE = 1


#: ``BlobType(t)`` without an enum call (once per blob when an index is read or looked up)
BLOB_TYPES = {int(t): t for t in BlobType}


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: BlobType
    id: bytes
    offset: int
    length: int


@dataclass(frozen=True)
class PackHeader:
    envelope: bytes
    entries: tuple[PackEntry, ...]
    #: bytes covered by the GMAC (everything in the header before the nonce)
    authenticated: bytes
    gmac: bytes
    data_length: int


def encode_header_body(envelope: bytes, entries: Iterable[tuple[int, bytes, int]]) -> bytes:
    items = list(entries)
    out = [HEADER_MAGIC, struct.pack("<B", VERSION), envelope, struct.pack("<I", len(items))]
    out.extend(_ENTRY.pack(t, i, n) for t, i, n in items)
    return b"".join(out)


def pack_tail_size(entries: int) -> int:
    """Bytes a pack's header and trailer take after its blobs, for ``entries`` blobs."""
    return len(HEADER_MAGIC) + 1 + ENVELOPE_LEN + 4 + _ENTRY.size * entries + GMAC_LEN + 4 + len(PACK_MAGIC)


def pack_trailer(header: bytes) -> bytes:
    return header + struct.pack("<I", len(header)) + PACK_MAGIC


def parse_pack_header(tail: bytes, pack_size: int) -> PackHeader:
    """Parse a pack header from the pack's last bytes (``tail`` may hold the whole pack)."""
    if len(tail) < 8 or tail[-4:] != PACK_MAGIC:
        raise IntegrityError("not a pack file (bad magic)")
    (hlen,) = struct.unpack("<I", tail[-8:-4])
    if hlen + 8 > pack_size or hlen + 8 > len(tail):
        raise IntegrityError("pack header length out of range")
    header = tail[-8 - hlen : -8]
    fixed = len(HEADER_MAGIC) + 1 + ENVELOPE_LEN + 4
    if len(header) < fixed + GMAC_LEN or header[:4] != HEADER_MAGIC or header[4] != VERSION:
        raise IntegrityError("pack header is malformed")
    envelope = header[5 : 5 + ENVELOPE_LEN]
    (count,) = struct.unpack_from("<I", header, 5 + ENVELOPE_LEN)
    if count > MAX_BLOBS_PER_PACK or len(header) != fixed + count * _ENTRY.size + GMAC_LEN:
        raise IntegrityError("pack header entry count does not match its length")
    entries = []
    offset = 0
    for t, bid, n in _ENTRY.iter_unpack(header[fixed : fixed + count * _ENTRY.size]):
        try:
            btype = BlobType(t)
        except ValueError:
            raise IntegrityError(f"pack header has unknown blob type {t}") from None
        entries.append(PackEntry(btype, bid, offset, n))
        offset += n
    data_length = pack_size - hlen - 8
    if offset != data_length:
        raise IntegrityError("pack blob lengths do not add up to the pack size")
    return PackHeader(envelope, tuple(entries), header[:-GMAC_LEN], header[-GMAC_LEN:], data_length)


def read_pack_header(read: Callable[[int, int], bytes], pack_size: int) -> PackHeader:
    """Parse the header of a stored pack of ``pack_size`` bytes reading only its tail:
    ``read(offset, length)`` returns the pack's bytes there. Two reads: the 8-byte trailer,
    then exactly the header (never blob bytes)."""
    if pack_size < 8:
        raise IntegrityError("not a pack file (too short)")
    trailer = bytes(read(pack_size - 8, 8))
    (hlen,) = struct.unpack("<I", trailer[:4])
    if trailer[4:] != PACK_MAGIC or hlen + 8 > pack_size:
        raise IntegrityError("not a pack file (no valid trailer)")
    return parse_pack_header(bytes(read(pack_size - 8 - hlen, hlen)) + trailer, pack_size)


# --- snapshots ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotPlain:
    """What anyone (the vault included) can read of a snapshot."""

    plain: dict[str, object]
    refs: tuple[bytes, ...]
    envelope: bytes
    #: every byte before the sealed metadata (the AAD of the sealed part)
    authenticated: bytes
    sealed_meta: bytes

    @property
    def tree(self) -> bytes:
        return bytes.fromhex(str(self.plain["tree"]))


def encode_snapshot_prefix(plain: dict[str, object], refs: Iterable[bytes], envelope: bytes) -> bytearray:
    """``refs`` may be any iterable; one already sorted and unique (a RefSet) is streamed into
    the one output buffer without being held twice in memory."""
    pj = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    out = bytearray(SNAP_MAGIC + struct.pack("<BI", VERSION, len(pj)) + pj + b"\0\0\0\0")
    start = len(out)
    prev = b""
    it = iter(refs)
    for r in it:
        if r <= prev:  # not sorted: fall back to sorting everything
            rest = {bytes(out[k : k + 32]) for k in range(start, len(out), 32)} | {r} | set(it)
            del out[start:]
            out += b"".join(sorted(rest))
            break
        out += r
        prev = r
    struct.pack_into("<I", out, start - 4, (len(out) - start) // 32)
    out += envelope
    return out


def parse_snapshot(data: bytes) -> SnapshotPlain:
    if not isinstance(data, bytes):
        data = bytes(data)  # ids must come out as (hashable) bytes
    try:
        if data[:4] != SNAP_MAGIC or data[4] != VERSION:
            raise IntegrityError("not a snapshot file (bad magic or version)")
        (plen,) = struct.unpack_from("<I", data, 5)
        if plen > MAX_PLAIN_JSON:
            raise IntegrityError("snapshot plain part too large")
        pos = 9
        plain = json.loads(data[pos : pos + plen])
        if not isinstance(plain, dict) or not isinstance(plain.get("tree"), str):
            raise IntegrityError("snapshot plain part lacks a tree id")
        bytes.fromhex(plain["tree"])
        pos += plen
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + 32 * n + ENVELOPE_LEN > len(data):
            raise IntegrityError("snapshot reference list is truncated")
        refs = tuple(data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n))
        if any(refs[i] >= refs[i + 1] for i in range(len(refs) - 1)):
            raise IntegrityError("snapshot references are not sorted and unique")
        pos += 32 * n
        envelope = data[pos : pos + ENVELOPE_LEN]
        pos += ENVELOPE_LEN
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        raise IntegrityError("snapshot file is malformed") from exc
    if len(data) - pos < GMAC_LEN:
        raise IntegrityError("snapshot metadata is truncated")
    return SnapshotPlain(plain, refs, envelope, data[:pos], data[pos:])


# --- index files -------------------------------------------------------------------------


def encode_index_pack(pack_id: bytes, entries: Iterable[PackEntry]) -> bytes:
    """One pack's section of an index file: 36 + 41 bytes per blob. A write session keeps
    these (not ``PackEntry`` objects, ~200 bytes per blob) for the packs not yet in an index
    file; :func:`join_index` puts them together."""
    body = bytearray(pack_id + b"\0\0\0\0")
    count = 0
    for e in entries:
        body += _IDX_ENTRY.pack(e.type, e.id, e.offset, e.length)
        count += 1
    struct.pack_into("<I", body, 32, count)
    return bytes(body)


def join_index(sections: Iterable[bytes]) -> bytes:
    """An index file made of :func:`encode_index_pack` sections."""
    parts = list(sections)
    return INDEX_MAGIC + struct.pack("<BI", VERSION, len(parts)) + b"".join(parts)


def encode_index(packs: Iterable[tuple[bytes, Iterable[PackEntry]]]) -> bytes:
    return join_index(encode_index_pack(pack_id, entries) for pack_id, entries in packs)


def parse_index(data: bytes) -> Iterator[tuple[bytes, list[PackEntry]]]:
    try:
        if data[:4] != INDEX_MAGIC or data[4] != VERSION:
            raise IntegrityError("not an index file")
        (count,) = struct.unpack_from("<I", data, 5)
        pos = 9
        for _ in range(count):
            pack_id = data[pos : pos + 32]
            (n,) = struct.unpack_from("<I", data, pos + 32)
            pos += 36
            end = pos + n * _IDX_ENTRY.size
            if end > len(data):
                raise IntegrityError("index file is truncated")
            entries = [  # a dict, not BlobType(t): a restore parses every index file first
                PackEntry(BLOB_TYPES[t], i, o, ln) for t, i, o, ln in _IDX_ENTRY.iter_unpack(data[pos:end])
            ]
            pos = end
            yield pack_id, entries
        if pos != len(data):
            raise IntegrityError("index file has trailing bytes")
    except (struct.error, ValueError, IndexError, KeyError) as exc:
        raise IntegrityError("index file is malformed") from exc

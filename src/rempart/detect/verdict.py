"""Per-file verdict: compare a file's new sketch with the sketch of its previous version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rempart.detect.sampling import WHOLE_FILE_LIMIT

if TYPE_CHECKING:  # annotations only: a run with nothing read never loads the format checks
    from rempart.detect.features import FileFeatures

# Verdict kinds. The damaged ones mean "this file's content was probably destroyed".
OK = "ok"
UNCHANGED = "unchanged"
NEW = "new"
NEW_RANDOM = "new-random"  # a new file of random or encoded bytes with no format (weak signal)
NEW_UNREADABLE = "new-unreadable"  # a new file whose name promises a format its bytes do not have
LEGIT_ENCRYPTED = "legit-encrypted"
TYPE_CHANGED = "type-changed"
BECAME_INVALID = "became-invalid"
BECAME_RANDOM = "became-random"
BECAME_ENCODED = "became-encoded"
RANDOM_REGIONS = "random-regions"
WIPED = "wiped"
DAMAGED_KINDS = frozenset({NEW_UNREADABLE, BECAME_INVALID, BECAME_RANDOM, BECAME_ENCODED, RANDOM_REGIONS, WIPED})

FAMILIES = {"docx": "zip", "xlsx": "zip", "pptx": "zip", "ooxml": "zip", "zip": "zip"}
EXPECTED_TYPE = {
    ".docx": "zip", ".docm": "zip", ".xlsx": "zip", ".xlsm": "zip", ".pptx": "zip", ".odt": "zip",
    ".ods": "zip", ".zip": "zip", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png",
    ".dcm": "dicom", ".sqlite": "sqlite", ".sqlite3": "sqlite", ".db3": "sqlite", ".7z": "7z",
    ".gz": "gzip", ".tgz": "gzip", ".exe": "pe", ".dll": "pe", ".doc": "cfb", ".xls": "cfb",
    ".msg": "cfb", ".txt": "text", ".csv": "text", ".xml": "text", ".html": "text", ".rtf": "text",
    ".ini": "text", ".json": "text",
}
# A structured file may turn into another structured type legitimately (encrypted OOXML is CFB).
_ENCRYPTED_ZIP_AS = "cfb"
# Generic data: a changed sampled range whose compressibility (zlib ratio, percent) jumps like
# this has had random bytes written into it.
ZR_JUMP = 15
ZR_FACTOR = 1.6
ZR_RANDOM = 97


def _jumped(p: int, c: int) -> bool:
    return (c - p >= ZR_JUMP and c >= ZR_FACTOR * p) or (c >= ZR_RANDOM and p <= ZR_RANDOM - ZR_JUMP)


@dataclass(frozen=True)
class FileVerdict:
    kind: str
    damaged: bool
    detail: str = ""


# The common outcomes, built once (a frozen dataclass costs a few µs to build per file).
_NEW = FileVerdict(NEW, False)
_OK = FileVerdict(OK, False)
_UNCHANGED = FileVerdict(UNCHANGED, False)


def family(kind: str) -> str:
    return FAMILIES.get(kind, kind)


def _unstructured_kind(cur: FileFeatures) -> str:
    if cur.type in ("zeros", "fill", "empty"):
        return WIPED
    if cur.encoded:
        return BECAME_ENCODED
    if cur.random:
        return BECAME_RANDOM
    return BECAME_INVALID


def compare(prev: FileFeatures | None, cur: FileFeatures) -> FileVerdict:
    """Judge the change from ``prev`` (None for a new file) to ``cur``."""
    if prev is None:
        return _new_file(cur)
    if (prev.hashes, prev.size, prev.type, prev.valid) == (cur.hashes, cur.size, cur.type, cur.valid):
        return _UNCHANGED
    if cur.enc and cur.valid:
        return FileVerdict(LEGIT_ENCRYPTED, False, cur.type)
    if prev.valid:
        if cur.valid:
            if family(cur.type) == family(prev.type):
                return _OK
            return FileVerdict(TYPE_CHANGED, False, f"{prev.type}->{cur.type}")
        if prev.type == "pe" and cur.type == "data" and not cur.random:
            return FileVerdict(TYPE_CHANGED, False, "pe->data")
        kind = _unstructured_kind(cur)
        if kind == BECAME_INVALID and cur.type == "empty":
            kind = WIPED
        return FileVerdict(kind, True, cur.why or cur.type)
    if prev.type in ("text",):
        return _from_text(prev, cur)
    if prev.type == "data" and not prev.random:
        return _from_data(prev, cur)
    return _OK


def _new_file(cur: FileFeatures) -> FileVerdict:
    if cur.enc and cur.valid:
        return FileVerdict(LEGIT_ENCRYPTED, False, cur.type)
    expected = EXPECTED_TYPE.get(cur.ext)
    if expected is not None and cur.size > 0:
        if expected == "text" and (cur.type == "text" or cur.valid):
            return _NEW
        if family(cur.type) == expected and cur.valid:
            return _NEW
        if cur.random or cur.encoded or cur.type in ("zeros", "fill"):
            return FileVerdict(NEW_UNREADABLE, True, cur.type)
        # A new file that is merely malformed (a vendor's non-conforming DICOM, a PNG saved as
        # .jpg, a half-copied file) is no evidence of encryption: it starts no alert.
        return FileVerdict(NEW, False, f"{cur.ext}:{cur.type}{'' if cur.valid else ':invalid'}")
    if cur.random or cur.encoded:
        return FileVerdict(NEW_RANDOM, False, cur.type)
    return _NEW


def _from_text(prev: FileFeatures, cur: FileFeatures) -> FileVerdict:
    if cur.type == "text":
        return _OK
    if cur.type == "empty":
        return FileVerdict(OK, False, "truncated")  # logs and exports are emptied legitimately
    if cur.valid:
        return FileVerdict(TYPE_CHANGED, False, f"text->{cur.type}")
    return FileVerdict(_unstructured_kind(cur), True, cur.type)


def _from_data(prev: FileFeatures, cur: FileFeatures) -> FileVerdict:
    if cur.type in ("zeros", "fill"):
        return FileVerdict(WIPED, True, cur.type)
    if cur.type != "data":
        if cur.valid or cur.type in ("text", "empty"):
            return FileVerdict(TYPE_CHANGED, False, f"data->{cur.type}")
        return FileVerdict(_unstructured_kind(cur), True, cur.type)
    if cur.random:
        return FileVerdict(BECAME_RANDOM, True, "head")
    if prev.zr is None or cur.zr is None:
        return FileVerdict(OK, False)
    if prev.size == cur.size and len(prev.zr) == len(cur.zr):
        pairs = [
            (p, c) for p, c, ph, ch in zip(prev.zr, cur.zr, prev.hashes, cur.hashes, strict=False) if ph != ch
        ]
    elif prev.size > WHOLE_FILE_LIMIT and cur.size > WHOLE_FILE_LIMIT:
        pairs = [(prev.zr[0], cur.zr[0])]  # the head range is the same 8 KiB in both plans
    else:
        pairs = [(sum(prev.zr) // len(prev.zr), sum(cur.zr) // len(cur.zr))] if prev.zr and cur.zr else []
    jumped = sum(1 for p, c in pairs if _jumped(p, c))
    # Encryption turns every range it touches random; a mailbox or cache that stores one new
    # compressed attachment among other changes does not.
    if jumped and 2 * jumped >= len(pairs):
        return FileVerdict(RANDOM_REGIONS, True, f"{jumped}/{len(pairs)}")
    return FileVerdict(OK, False)

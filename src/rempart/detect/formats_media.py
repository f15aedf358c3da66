"""Structural checks for images: JPEG, PNG and DICOM.

The entropy-coded part of a JPEG is checked too: inside a scan, 0xFF is always followed by 0x00
(byte stuffing), a restart marker or a marker that ends the scan. Random bytes break that rule
about 15 times per 4 KiB, so even a block encrypted in the middle of a photo is seen. DICOM pixel
data with fewer stored bits than allocated leaves the high bits of every sample at zero, which
random bytes do not.
"""

from __future__ import annotations

import struct
import zlib

from rempart.detect.sampling import Check, SampleView

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Bytes that may follow 0xFF inside entropy-coded data: stuffing, restarts, end of image, the
# markers between the scans of a progressive JPEG, and 0xFF fill (b"" after a split).
_SCAN_OK = frozenset([b"", *(bytes([m]) for m in (0x00, *range(0xD0, 0xD8), 0xD9, 0xDA, 0xC4, 0xDB, 0xDD))])
# DICOM fragments start with a whole JPEG header (SOI, SOFn, APPn ...) and item tags FE FF.
_FRAGMENT_OK = _SCAN_OK | {bytes([m]) for m in (0xD8, *range(0xC0, 0xD0), *range(0xE0, 0xF0), 0xFE)}
# Photos may embed more JPEG images after the first (MPF previews, depth maps): their headers
# (SOI, APPn, SOFn) can appear inside sampled blocks, so they are allowed too. Random bytes
# still break the rule about 13 times per 4 KiB.
_EMBEDDED_OK = _FRAGMENT_OK
_SEGMENT_MARKERS = frozenset([*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, *range(0xE0, 0xF0), 0xFE])
_MAX_SCAN_VIOLATIONS = 1
_MAX_PIXEL_VIOLATIONS = 3


def ff_violations(data: bytes, allowed: frozenset[bytes] = _SCAN_OK) -> int:
    """How many 0xFF bytes are followed by a byte that cannot follow 0xFF in entropy-coded data."""
    pieces = data.split(b"\xff")
    if len(pieces) < 3:
        return 0
    # each piece after a 0xFF starts with the byte that followed it; the last one may be cut
    return sum(1 for p in pieces[1:-1] if p[:1] not in allowed)


def _jpeg_header(head: bytes) -> tuple[str, int]:
    """Walk the marker segments: (error or "", offset where the first scan's data starts or -1)."""
    pos = 2
    sof = False
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return "bad-marker", -1
        marker = head[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker not in _SEGMENT_MARKERS and marker != 0xDA:
            return "bad-marker", -1
        (length,) = struct.unpack_from(">H", head, pos + 2)
        if length < 2:
            return "bad-segment-length", -1
        if marker == 0xDA:
            return ("" if sof else "scan-before-frame"), pos + 2 + length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sof = True
        pos += 2 + length
    return "", -1


def check_jpeg(view: SampleView) -> Check:
    why, sos = _jpeg_header(view.head)
    if why:
        return Check("jpeg", False, why)
    tail = view.tail
    eoi = tail.rfind(b"\xff\xd9")
    if eoi < 0:
        return Check("jpeg", False, "no-end-of-image")
    if sos < 0:
        return Check("jpeg", True)  # headers longer than the head sample (big EXIF): not checked
    tail_off = view.size - len(tail)
    bad = 0
    for off, data in view.ranges:
        end = off + len(data)
        if off == tail_off:
            end = tail_off + eoi + 2
        lo = max(off, sos)
        if lo >= end:
            continue
        bad += ff_violations(data[lo - off : end - off], _EMBEDDED_OK)
    if bad > _MAX_SCAN_VIOLATIONS:
        return Check("jpeg", False, "bad-entropy-coded-data")
    return Check("jpeg", True)


def check_png(view: SampleView) -> Check:
    head = view.head
    pos = 8
    first = True
    while pos + 12 <= len(head):
        length, ctype = struct.unpack_from(">I4s", head, pos)
        if not ctype.isalpha() or length > 0x7FFFFFFF:
            return Check("png", False, "bad-chunk")
        if first and (ctype != b"IHDR" or length != 13):
            return Check("png", False, "no-ihdr")
        first = False
        end = pos + 12 + length
        if end > len(head):
            break
        (crc,) = struct.unpack_from(">I", head, end - 4)
        if zlib.crc32(head[pos + 4 : end - 4]) != crc:
            return Check("png", False, "bad-chunk-crc")
        pos = end
    if first:
        return Check("png", False, "no-ihdr")
    if view.tail[-12:] != b"\x00\x00\x00\x00IEND\xaeB`\x82":
        return Check("png", False, "no-iend")
    return Check("png", True)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}
_IMPLICIT = "1.2.840.10008.1.2"
_ALLOWED_HIGH = {bits: bytes(range(1 << (bits - 8))) for bits in range(9, 16)}
_UNDEFINED = 0xFFFFFFFF


def _dicom_elements(head: bytes, pos: int, explicit: bool, meta_only: bool) -> tuple[str, int, dict]:
    """Parse elements from ``pos``: (error, position reached, values of interest)."""
    found: dict[tuple[int, int], object] = {}
    last = (-1, -1)
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if meta_only and group != 2:
            break
        if (group, elem) <= last:
            return "tags-out-of-order", pos, found
        last = (group, elem)
        vr = head[pos + 4 : pos + 6]
        if explicit or group == 2:
            if vr in _LONG_VRS:
                if pos + 12 > len(head):
                    break
                (length,) = struct.unpack_from("<I", head, pos + 8)
                start = pos + 12
            elif vr in _SHORT_VRS:
                (length,) = struct.unpack_from("<H", head, pos + 6)
                start = pos + 8
            else:
                return "bad-vr", pos, found
        else:
            (length,) = struct.unpack_from("<I", head, pos + 4)
            start = pos + 8
        if (group, elem) == (0x7FE0, 0x0010):
            found[(group, elem)] = (start, length)
            return "", start, found
        if length == _UNDEFINED:
            return "", pos, found  # a sequence of undefined length: stop checking here
        if (group, elem) in ((0x0002, 0x0010), (0x0028, 0x0100), (0x0028, 0x0101), (0x0028, 0x0103)):
            found[(group, elem)] = head[start : start + length]
        pos = start + length
    return "", pos, found


def check_dicom(view: SampleView) -> Check:
    head = view.head
    why, pos, meta = _dicom_elements(head, 132, True, True)
    ts_raw = meta.get((0x0002, 0x0010))
    if why or not isinstance(ts_raw, bytes):
        return Check("dicom", False, why or "no-transfer-syntax")
    ts = ts_raw.rstrip(b"\x00 ").decode("ascii", "replace")
    if not ts.startswith("1.2.840.10008.1.2"):
        return Check("dicom", False, "bad-transfer-syntax")
    why, pos, data = _dicom_elements(head, pos, ts != _IMPLICIT, False)
    if why:
        return Check("dicom", False, why)
    pixel = data.get((0x7FE0, 0x0010))
    if not isinstance(pixel, tuple):
        return Check("dicom", True)
    start, length = pixel
    if length == _UNDEFINED:
        if b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" not in view.tail[-64:]:
            return Check("dicom", False, "no-sequence-delimiter")
        bad = sum(ff_violations(d[max(0, start - off) :], _FRAGMENT_OK) for off, d in view.ranges)
        return Check("dicom", bad <= _MAX_SCAN_VIOLATIONS, "" if bad <= 1 else "bad-fragment-data")
    if start + length > view.size:
        return Check("dicom", False, "truncated-pixel-data")
    return _check_native_pixels(view, data, start, length)


def _us(raw: object) -> int | None:
    if isinstance(raw, bytes) and len(raw) == 2:
        return int(struct.unpack("<H", raw)[0])
    return None


def _check_native_pixels(view: SampleView, data: dict, start: int, length: int) -> Check:
    allocated = _us(data.get((0x0028, 0x0100)))
    stored = _us(data.get((0x0028, 0x0101)))
    signed = _us(data.get((0x0028, 0x0103)))
    if allocated != 16 or stored is None or not 8 < stored < 16 or signed:
        return Check("dicom", True)
    allowed = _ALLOWED_HIGH[stored]
    bad = 0
    end = start + length
    for off, chunk in view.ranges:
        lo, hi = max(off, start), min(off + len(chunk), end)
        if lo >= hi:
            continue
        first_high = lo + (lo - start + 1) % 2  # little endian: the high byte of each sample is odd
        bad += len(chunk[first_high - off : hi - off : 2].translate(None, allowed))
    if bad > _MAX_PIXEL_VIOLATIONS:
        return Check("dicom", False, "pixel-values-out-of-range")
    return Check("dicom", True)

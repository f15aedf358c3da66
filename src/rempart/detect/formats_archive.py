"""Structural checks for containers: ZIP (and DOCX/XLSX), OLE/CFB, 7z, gzip and PDF.

Each validator sees only the sampled ranges; it checks every structure that falls inside them
and reports the first inconsistency in ``why``.
"""

from __future__ import annotations

import re
import struct
import zlib

from rempart.detect.sampling import Check, SampleView

ZIP_MAGIC = b"PK\x03\x04"
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
SEVENZ_MAGIC = b"7z\xbc\xaf\x27\x1c"
GZIP_MAGIC = b"\x1f\x8b\x08"
_ZIP_METHODS = {0, 1, 6, 8, 9, 12, 14, 19, 93, 95, 96, 97, 98, 99}
_AES_EXTRA = 0x9901
_MAX_CD_WALK = 2000
_ZIP64_WINDOW = 128  # bytes before the EOCD searched for the zip64 locator


def _zip_kind(view: SampleView, first_name: bytes) -> str:
    if first_name == b"[Content_Types].xml" or view.find(b"[Content_Types].xml"):
        if view.find(b"word/"):
            return "docx"
        if view.find(b"xl/"):
            return "xlsx"
        if view.find(b"ppt/"):
            return "pptx"
        return "ooxml"
    return "zip"


def _has_aes_extra(extra: bytes) -> bool:
    pos = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        if hid == _AES_EXTRA:
            return True
        pos += 4 + hlen
    return False


def check_zip(view: SampleView) -> Check:
    head = view.head
    if len(head) < 30:
        return Check("zip", False, "short-local-header")
    _ver, flags, method, _t, _d, _crc, _cs, _us, nlen, xlen = struct.unpack_from("<HHHHHIIIHH", head, 4)
    name = head[30 : 30 + nlen]
    if method not in _ZIP_METHODS or not 0 < nlen <= 1024 or b"\x00" in name:
        return Check("zip", False, "bad-local-header")
    extra = head[30 + nlen : 30 + nlen + xlen]
    enc = bool(flags & 1) or method == 99 or _has_aes_extra(extra)
    kind = _zip_kind(view, name)
    tail = view.tail
    if not tail:
        return Check(kind, False, "no-tail")
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(tail):
        return Check(kind, False, "no-end-of-central-directory", enc=enc)
    _d1, _d2, _n_disk, n_total, cd_size, cd_off, clen = struct.unpack_from("<HHHHIIH", tail, eocd + 4)
    eocd_abs = view.size - len(tail) + eocd
    if eocd_abs + 22 + clen != view.size:
        return Check(kind, False, "bad-comment-length", enc=enc)
    # the zip64 locator sits just before the EOCD (20 bytes; a little slack for odd writers):
    # searching the whole tail cost a full scan of every small zip
    zip64 = cd_off == 0xFFFFFFFF or n_total == 0xFFFF or tail.find(b"PK\x06\x07", max(0, eocd - _ZIP64_WINDOW), eocd) >= 0
    if not zip64 and cd_off + cd_size != eocd_abs:
        return Check(kind, False, "bad-central-directory-offset", enc=enc, entries=n_total)
    if not zip64:
        cd = view.get(cd_off, cd_size)  # None when the directory is not all inside one sample
        if cd is not None:
            why, cd_enc = _walk_central_directory(view, cd, n_total)
            if why:
                return Check(kind, False, why, enc=enc, entries=n_total)
            enc = enc or cd_enc
    return Check(kind, True, enc=enc, entries=n_total)


_CD_ENTRY = struct.Struct("<4s4xHH16xHHH8xI")  # signature, flags, method, name/extra/comment lengths, offset


def _walk_central_directory(view: SampleView, cd: bytes, n_total: int) -> tuple[str, bool]:
    pos = 0
    seen = 0
    enc = False
    limit = min(n_total, _MAX_CD_WALK)
    unpack = _CD_ENTRY.unpack_from
    while pos < len(cd) and seen < limit:
        if pos + 46 > len(cd):
            return "bad-central-directory-entry", enc
        sig, flags, method, nlen, xlen, clen, local = unpack(cd, pos)
        if sig != b"PK\x01\x02" or method not in _ZIP_METHODS or nlen == 0:
            return "bad-central-directory-entry", enc
        if flags & 1 or method == 99 or (xlen and _has_aes_extra(cd[pos + 46 + nlen : pos + 46 + nlen + xlen])):
            enc = True
        local_sig = view.get(local, 4)
        if local_sig is not None and local_sig != ZIP_MAGIC:
            return "bad-local-header-offset", enc
        pos += 46 + nlen + xlen + clen
        seen += 1
    if seen < limit and pos < len(cd):
        return "bad-central-directory-entry", enc
    return "", enc


def check_cfb(view: SampleView) -> Check:
    head = view.head
    if len(head) < 512:
        return Check("cfb", False, "short-header")
    major, byte_order, sector_shift, mini_shift = struct.unpack_from("<HHHH", head, 26)
    if byte_order != 0xFFFE or major not in (3, 4) or mini_shift != 6:
        return Check("cfb", False, "bad-header")
    if (major, sector_shift) not in ((3, 9), (4, 12)):
        return Check("cfb", False, "bad-sector-size")
    if head[34:40] != b"\x00" * 6 or struct.unpack_from("<I", head, 56)[0] != 4096:
        return Check("cfb", False, "bad-header")
    if view.size % (1 << sector_shift):
        return Check("cfb", False, "bad-size")
    encrypted = view.find("EncryptedPackage".encode("utf-16-le")) and view.find(
        "EncryptionInfo".encode("utf-16-le")
    )
    return Check("cfb", True, enc=bool(encrypted))


def check_7z(view: SampleView) -> Check:
    head = view.head
    if len(head) < 32:
        return Check("7z", False, "short-header")
    if head[6] != 0:
        return Check("7z", False, "bad-version")
    (crc,) = struct.unpack_from("<I", head, 8)
    if zlib.crc32(head[12:32]) != crc:
        return Check("7z", False, "bad-start-header-crc")
    next_off, next_size = struct.unpack_from("<QQ", head, 12)
    if 32 + next_off + next_size > view.size:
        return Check("7z", False, "bad-next-header")
    return Check("7z", True)


def check_gzip(view: SampleView) -> Check:
    head = view.head
    if len(head) < 18 or head[3] & 0xE0:
        return Check("gzip", False, "bad-header")
    if view.size < 18:
        return Check("gzip", False, "short")
    return Check("gzip", True)


_STARTXREF = re.compile(rb"startxref\s+(\d{1,20})\s+%%EOF", re.S)


_OBJ = re.compile(rb"\d+\s+\d+\s+obj")
_PDF_WINDOW = 4096  # bytes of the head, the tail and the cross-reference section searched for /Encrypt


def _pdf_encrypted(view: SampleView, xref: int) -> bool:
    """/Encrypt is a key of the trailer dictionary or of the cross-reference stream's dictionary
    (ISO 32000-1 7.5.5, 7.5.8): searched at the end of the file, at the start (linearized files
    keep a first-page trailer there) and where startxref points, not through every sampled byte."""
    if b"/Encrypt" in view.tail[-_PDF_WINDOW:] or b"/Encrypt" in view.head[:_PDF_WINDOW]:
        return True
    for off, data in view.ranges:
        if off <= xref < off + len(data):
            return b"/Encrypt" in data[xref - off : xref - off + _PDF_WINDOW]
    return False


def check_pdf(view: SampleView) -> Check:
    head = view.head
    pos = head.find(b"%PDF-", 0, 1024)
    if pos < 0 or head[pos + 5 : pos + 6] not in (b"1", b"2"):
        return Check("pdf", False, "no-header")
    tail = view.tail[-2048:]
    if b"%%EOF" not in tail[-1024:]:
        return Check("pdf", False, "no-eof", enc=_pdf_encrypted(view, -1))
    found = list(_STARTXREF.finditer(tail))
    if not found:
        return Check("pdf", False, "no-startxref", enc=_pdf_encrypted(view, -1))
    xref = int(found[-1].group(1))
    enc = _pdf_encrypted(view, xref)
    if xref >= view.size:
        return Check("pdf", False, "bad-startxref", enc=enc)
    target = view.get(xref, 16)
    if target is not None and not (target.startswith(b"xref") or _OBJ.match(target)):
        return Check("pdf", False, "bad-xref-target", enc=enc)
    return Check("pdf", True, enc=enc)

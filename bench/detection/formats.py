"""Builders of realistic file bytes for the benchmark data set and the tests (no third-party deps).

Every builder takes a :class:`Rand` (seeded) and returns bytes with the real structure of its
format: DICOM (native 12-bit or JPEG-encapsulated), JPEG, DOCX/XLSX (real zip), PDF (optionally
password-protected), encrypted OOXML (CFB with EncryptionInfo/EncryptedPackage), AES zip (WinZip
AE-2 extra field 0x9901) and PE executables.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zipfile
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

WORDS = (
    "le la les de du des un une et en au patient patiente rendez-vous soins dent dents carie detartrage "
    "couronne implant radiographie panoramique devis facture mutuelle remboursement docteur cabinet "
    "controle annuel prothese extraction anesthesie ordonnance traitement canal molaire incisive "
    "gencive hygiene brossage suivi semaine prochaine merci cordialement madame monsieur lettre "
    "consultation urgence douleur antalgique orthodontie appareil bilan parodontal acte montant euros"
).split()
_HIGH_NIBBLE = bytes(b & 0x0F for b in range(256))
_HALF_ZERO = bytes(b if b & 0x40 else 0 for b in range(256))


class Rand:
    """Seeded randomness: small choices from random.Random, bulk bytes from an AES-CTR stream."""

    def __init__(self, seed: int | str) -> None:
        self.rng = random.Random(seed)

    def bytes(self, n: int) -> bytes:
        if n <= 0:
            return b""
        key = self.rng.randbytes(32)
        nonce = self.rng.randbytes(16)
        enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        return enc.update(bytes(n))

    def words(self, n: int) -> str:
        i = self.rng.randrange(len(_CORPUS_WORDS) - n)
        return " ".join(_CORPUS_WORDS[i : i + n])

    def text(self, size: int) -> str:
        """About ``size`` characters of sentences (a window of a fixed pseudo-French corpus)."""
        size = min(size, len(_CORPUS) // 2)
        i = _CORPUS.index("\r\n", self.rng.randrange(len(_CORPUS) - size - 200)) + 2
        return _CORPUS[i : i + size].rsplit("\r\n", 1)[0] + "\r\n"


def _corpus() -> tuple[list[str], str]:
    rng = random.Random(0)
    words = rng.choices(WORDS, k=120_000)
    lines = []
    i = 0
    while i < len(words):
        n = rng.randint(6, 16)
        lines.append(" ".join(words[i : i + n]).capitalize() + ".")
        i += n
    return words, "\r\n".join(lines) + "\r\n"


_CORPUS_WORDS, _CORPUS = _corpus()


# --------------------------------------------------------------------------- JPEG


def jpeg(r: Rand, size: int) -> bytes:
    """A baseline JPEG of about ``size`` bytes: real markers, byte-stuffed entropy-coded data."""
    w, h = r.rng.choice([(4000, 3000), (3264, 2448), (1920, 1080), (1280, 960)])
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif_text = f"Exif\x00\x00CABINET DENTAIRE camera {r.rng.randint(1, 9999)}".encode()
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif_text) + 2) + exif_text
    dqt = b"\xff\xdb\x00\x43\x00" + bytes(r.rng.randint(1, 99) for _ in range(64))
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", h, w) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    counts = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    dht = b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 12) + b"\x00" + counts + bytes(range(12))
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    header = b"\xff\xd8" + app0 + app1 + dqt + sof + dht + sos
    body = r.bytes(max(64, size - len(header) - 2 - size // 256)).replace(b"\xff", b"\xff\x00")
    return header + body + b"\xff\xd9"


# --------------------------------------------------------------------------- DICOM


def _el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def dicom(r: Rand, size: int, *, compressed: bool = False, patient: str = "P000001") -> bytes:
    uid = f"1.2.826.0.1.3680043.9.7777.{r.rng.randint(1, 10**9)}.{r.rng.randint(1, 10**6)}".encode()
    ts = b"1.2.840.10008.1.2.4.70" if compressed else b"1.2.840.10008.1.2.1"
    sop_class = b"1.2.840.10008.5.1.4.1.1.1.3"
    meta_body = (
        _el(2, 1, b"OB", b"\x00\x01") + _el(2, 2, b"UI", sop_class) + _el(2, 3, b"UI", uid)
        + _el(2, 0x10, b"UI", ts) + _el(2, 0x12, b"UI", b"1.2.826.0.1.3680043.9.7777")
    )
    meta = _el(2, 0, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    pixels_needed = max(1024, size - 600)
    cols = 1024 if pixels_needed > 4_000_000 else 512
    rows = max(2, pixels_needed // (2 * cols))
    ds = (
        _el(8, 0x16, b"UI", sop_class) + _el(8, 0x18, b"UI", uid)
        + _el(8, 0x20, b"DA", f"2025{r.rng.randint(1, 12):02d}{r.rng.randint(1, 28):02d}".encode())
        + _el(8, 0x60, b"CS", r.rng.choice([b"IO", b"PX"]))
        + _el(0x10, 0x10, b"PN", f"PATIENT^{patient}".encode()) + _el(0x10, 0x20, b"LO", patient.encode())
        + _el(0x28, 2, b"US", struct.pack("<H", 1)) + _el(0x28, 4, b"CS", b"MONOCHROME2")
        + _el(0x28, 0x10, b"US", struct.pack("<H", rows)) + _el(0x28, 0x11, b"US", struct.pack("<H", cols))
        + _el(0x28, 0x100, b"US", struct.pack("<H", 16)) + _el(0x28, 0x101, b"US", struct.pack("<H", 12))
        + _el(0x28, 0x102, b"US", struct.pack("<H", 11)) + _el(0x28, 0x103, b"US", struct.pack("<H", 0))
    )
    head = b"\x00" * 128 + b"DICM" + meta + ds
    if compressed:
        frag = jpeg(r, max(2048, size - len(head) - 40))
        frag += b"\x00" * (len(frag) % 2)
        pixel = (
            struct.pack("<HH", 0x7FE0, 0x10) + b"OB\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
            + struct.pack("<HHI", 0xFFFE, 0xE000, len(frag)) + frag
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        )
        return head + pixel
    n = rows * cols
    buf = bytearray(2 * n)
    buf[0::2] = r.bytes(n)
    buf[1::2] = r.bytes(n).translate(_HIGH_NIBBLE)
    return head + struct.pack("<HH", 0x7FE0, 0x10) + b"OW\x00\x00" + struct.pack("<I", 2 * n) + bytes(buf)


# --------------------------------------------------------------------------- Office, zip


def _zip(members: list[tuple[str, bytes]], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2025, 6, 1, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


def docx(r: Rand, text_size: int, image_size: int = 0) -> bytes:
    paras = "".join(f"<w:p><w:r><w:t>{line}</w:t></w:r></w:p>" for line in r.text(text_size).split("\r\n"))
    members = [
        ("[Content_Types].xml", b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="ct"/>'),
        ("_rels/.rels", b'<?xml version="1.0"?><Relationships/>'),
        ("word/document.xml", f'<?xml version="1.0"?><w:document><w:body>{paras}</w:body></w:document>'.encode()),
        ("docProps/core.xml", f"<cp:coreProperties><dc:creator>{r.words(2)}</dc:creator></cp:coreProperties>".encode()),
    ]
    if image_size:
        members.append(("word/media/image1.jpeg", jpeg(r, image_size)))
    return _zip(members)


def xlsx(r: Rand, rows: int) -> bytes:
    cells = "".join(
        f'<row r="{i}"><c t="inlineStr"><is><t>{r.words(2)}</t></is></c><c><v>{r.rng.randint(10, 9000)}</v></c></row>'
        for i in range(1, rows + 1)
    )
    members = [
        ("[Content_Types].xml", b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="ct"/>'),
        ("_rels/.rels", b'<?xml version="1.0"?><Relationships/>'),
        ("xl/workbook.xml", b'<?xml version="1.0"?><workbook><sheets><sheet name="S1"/></sheets></workbook>'),
        ("xl/worksheets/sheet1.xml", f'<?xml version="1.0"?><worksheet><sheetData>{cells}</sheetData></worksheet>'.encode()),
    ]
    return _zip(members)


def aes_zip(r: Rand, members: list[tuple[str, int]]) -> bytes:
    """A WinZip AES (AE-2) archive: method 99, extra field 0x9901, random ciphertext bodies."""
    out = bytearray()
    central = bytearray()
    for name, size in members:
        raw = name.encode()
        extra = struct.pack("<HHH2sBH", 0x9901, 7, 2, b"AE", 3, 8)
        body = r.bytes(16 + 2 + size + 10)
        local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 51, 1, 99, 0, 0x5AC1, 0, len(body), size, len(raw), len(extra))
        offset = len(out)
        out += local + raw + extra + body
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 63, 51, 1, 99, 0, 0x5AC1, 0, len(body), size,
            len(raw), len(extra), 0, 0, 0, 0, offset,
        ) + raw + extra
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + eocd)


def cfb(streams: list[tuple[str, bytes]]) -> bytes:
    """A version-3 compound file holding ``streams`` (each padded to the 4096-byte cutoff)."""
    ss = 512
    free, end, fatsect = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
    datas = [d + b"\x00" * max(0, 4096 - len(d)) for _, d in streams]
    nsec = [math.ceil(len(d) / ss) for d in datas]
    n_dir = math.ceil((len(streams) + 1) / 4)
    n_fat = 1
    while n_fat + n_dir + sum(nsec) > n_fat * 128:
        n_fat += 1
    fat = [fatsect] * n_fat + [*range(n_fat + 1, n_fat + n_dir), end]
    starts = []
    pos = n_fat + n_dir
    for n in nsec:
        starts.append(pos)
        fat += [*range(pos + 1, pos + n), end]
        pos += n
    fat += [free] * (n_fat * 128 - len(fat))

    def entry(name: str, kind: int, child: int, right: int, start: int, size: int) -> bytes:
        raw = name.encode("utf-16-le") + b"\x00\x00"
        return (
            raw.ljust(64, b"\x00") + struct.pack("<HBB", len(raw), kind, 1) + struct.pack("<III", free, right, child)
            + b"\x00" * 16 + b"\x00" * 4 + b"\x00" * 16 + struct.pack("<IQ", start, size)
        )

    dirs = entry("Root Entry", 5, 1 if streams else free, free, end, 0)
    for i, (name, data) in enumerate(streams):
        dirs += entry(name, 2, free, i + 2 if i + 1 < len(streams) else free, starts[i], len(data))
    dirs = dirs.ljust(n_dir * ss, b"\x00")
    difat = [*range(n_fat)] + [free] * (109 - n_fat)
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
        + struct.pack("<IIIIIIIII", 0, n_fat, n_fat, 0, 4096, end, 0, end, 0)
        + struct.pack("<109I", *difat)
    )
    body = struct.pack(f"<{len(fat)}I", *fat) + dirs + b"".join(d.ljust(n * ss, b"\x00") for d, n in zip(datas, nsec, strict=True))
    return header + body


def encrypted_ooxml(r: Rand, size: int) -> bytes:
    """What Office writes for a password-protected DOCX/XLSX (agile encryption)."""
    info = b"\x04\x00\x04\x00\x40\x00\x00\x00" + b'<?xml version="1.0"?><encryption xmlns="http://schemas.microsoft.com/office/2006/encryption"/>'
    return cfb([("EncryptionInfo", info), ("EncryptedPackage", struct.pack("<Q", size) + r.bytes(size))])


def pdf(r: Rand, pages: int, image_size: int = 0, *, encrypted: bool = False) -> bytes:
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    for i in range(pages):
        content = f"BT /F1 11 Tf 60 760 Td ({r.words(40)}) Tj ET".encode()
        stream = r.bytes(len(content)) if encrypted else zlib.compress(content)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
    if image_size:
        img = jpeg(r, image_size)
        objects.append(b"<< /Type /XObject /Subtype /Image /Filter /DCTDecode /Length %d >>\nstream\n" % len(img) + img + b"\nendstream")
    if encrypted:
        objects.append(b"<< /Filter /Standard /V 5 /R 6 /Length 256 /O <" + r.bytes(48).hex().encode() + b"> /U <" + r.bytes(48).hex().encode() + b"> /P -1028 >>")
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    enc = b" /Encrypt %d 0 R /ID [<%s><%s>]" % (len(objects), r.bytes(16).hex().encode(), r.bytes(16).hex().encode()) if encrypted else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, enc, xref)
    return bytes(out)


def pe(r: Rand, size: int) -> bytes:
    dos = bytearray(b"MZ" + b"\x90\x00" * 29)
    dos[0x3C:0x40] = struct.pack("<I", 0x80)
    dos = bytes(dos).ljust(0x80, b"\x00")
    header = b"PE\x00\x00" + struct.pack("<HHIIIHH", 0x8664, 3, 0x5F000000 + r.rng.randint(0, 10**6), 0, 0, 0xF0, 0x22)
    body = r.bytes(max(0, size - len(dos) - len(header))).translate(_HALF_ZERO)
    return dos + header + body

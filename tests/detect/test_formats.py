"""Format validators on real files: zipfile, sqlite3, hand-written PDF/PNG, bench builders."""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from detect_helpers import features_of

from detection import formats as fm


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(width: int = 64, height: int = 64) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _sqlite(path: Path, rows: int = 3000) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, note TEXT)")
    con.executemany("INSERT INTO t(name, note) VALUES (?, ?)", [(f"name{i}", "x" * (i % 200)) for i in range(rows)])
    con.commit()
    con.close()
    return path.read_bytes()


def test_docx_and_xlsx_are_valid_zip_kinds(rand: fm.Rand) -> None:
    d = features_of("a.docx", fm.docx(rand, 5000, 20000))
    x = features_of("a.xlsx", fm.xlsx(rand, 300))
    assert (d.type, d.valid, d.enc) == ("docx", True, False)
    assert (x.type, x.valid) == ("xlsx", True)
    plain = features_of("a.zip", _zip({"a.txt": b"hello" * 100, "b.bin": os.urandom(5000)}))
    assert (plain.type, plain.valid, plain.entries) == ("zip", True, 2)


def test_big_docx_checked_through_its_tail(rand: fm.Rand) -> None:
    data = fm.docx(rand, 20000, 300_000)
    assert features_of("a.docx", data).valid
    broken = data[:-200] + os.urandom(200)  # central directory end destroyed
    assert features_of("a.docx", broken).valid is False


def test_zip_with_corrupted_central_directory_is_invalid() -> None:
    data = bytearray(_zip({f"f{i}.txt": b"data" * 50 for i in range(10)}))
    cd = data.rfind(b"PK\x01\x02")
    data[cd : cd + 4] = b"XXXX"
    f = features_of("a.zip", bytes(data))
    assert f.valid is False and "central-directory" in f.why


def test_aes_zip_is_legitimately_encrypted(rand: fm.Rand) -> None:
    f = features_of("secret.zip", fm.aes_zip(rand, [("a.pdf", 3000), ("b.pdf", 5000)]))
    assert (f.type, f.valid, f.enc) == ("zip", True, True)


def test_zipcrypto_flag_is_legitimately_encrypted() -> None:
    data = bytearray(_zip({"a.txt": b"x" * 100}))
    data[6] |= 1  # general purpose flag bit 0 in the local header
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 8] |= 1
    f = features_of("a.zip", bytes(data))
    assert f.valid and f.enc


def test_encrypted_ooxml_cfb(rand: fm.Rand) -> None:
    f = features_of("a.docx", fm.encrypted_ooxml(rand, 20000))
    assert (f.type, f.valid, f.enc) == ("cfb", True, True)
    plain = features_of("a.doc", fm.cfb([("WordDocument", b"x" * 5000)]))
    assert (plain.type, plain.valid, plain.enc) == ("cfb", True, False)
    bad = bytearray(fm.encrypted_ooxml(rand, 20000))
    bad[28:30] = b"\x00\x00"  # byte order mark
    assert features_of("a.docx", bytes(bad)).valid is False


def test_pdf_plain_encrypted_and_broken(rand: fm.Rand) -> None:
    plain = features_of("a.pdf", fm.pdf(rand, 2, 30000))
    assert (plain.type, plain.valid, plain.enc) == ("pdf", True, False)
    enc = features_of("a.pdf", fm.pdf(rand, 2, 30000, encrypted=True))
    assert (enc.type, enc.valid, enc.enc) == ("pdf", True, True)
    data = fm.pdf(rand, 2, 30000)
    assert features_of("a.pdf", data[:-30]).valid is False  # no %%EOF / startxref
    xref = int(data.rsplit(b"startxref", 1)[1].split()[0])
    moved = data.replace(b"startxref\n%d" % xref, b"startxref\n%d" % (xref - 7))
    assert features_of("a.pdf", moved).why == "bad-xref-target"


def test_jpeg_valid_and_intermittently_encrypted_middle(rand: fm.Rand) -> None:
    data = fm.jpeg(rand, 400_000)
    assert features_of("a.jpg", data).valid
    out = bytearray(data)
    for off in range(100_000, 300_000, 256):  # header kept: 64 bytes on, 192 off in the body
        out[off : off + 64] = os.urandom(64)
    f = features_of("a.jpg", bytes(out))
    assert f.valid is False and f.why == "bad-entropy-coded-data"


def test_png_valid_and_crc_checked() -> None:
    data = _png()
    assert features_of("a.png", data).valid
    bad = bytearray(data)
    bad[20] ^= 0xFF  # inside IHDR
    assert features_of("a.png", bytes(bad)).why == "bad-chunk-crc"


@pytest.mark.parametrize("compressed", [False, True])
def test_dicom_valid_and_pixel_tampering(rand: fm.Rand, compressed: bool) -> None:
    data = fm.dicom(rand, 1_500_000, compressed=compressed)
    f = features_of("x.dcm", data)
    assert (f.type, f.valid) == ("dicom", True)
    out = bytearray(data)
    for off in range(8192, len(data), 256):  # header kept, body 64 bytes on / 192 off
        out[off : off + 64] = os.urandom(64)
    assert features_of("x.dcm", bytes(out)).valid is False


def test_sqlite_valid_then_page_and_header_damage(tmp_path: Path) -> None:
    data = _sqlite(tmp_path / "db.sqlite")
    f = features_of("cabinet.sqlite", data)
    assert (f.type, f.valid, f.db) == ("sqlite", True, True)
    out = bytearray(data)
    for page in range(4096 * 3, len(data) - 4096, 4096):  # every page after the third: 16 on / 16 off
        for off in range(page, page + 4096, 32):
            out[off : off + 16] = os.urandom(16)
    assert features_of("cabinet.sqlite", bytes(out)).why == "bad-page"
    head = bytearray(data)
    head[16:18] = b"\x03\x00"  # page size not a power of two
    assert features_of("cabinet.sqlite", bytes(head)).valid is False


def test_pe_and_gzip(rand: fm.Rand) -> None:
    assert features_of("a.dll", fm.pe(rand, 200_000)).valid
    gz = features_of("dump.sql.gz", zlib.compress(b"x") and __import__("gzip").compress(b"insert" * 1000))
    assert (gz.type, gz.valid) == ("gzip", True)


def test_text_base64_hex_random_zeros(rand: fm.Rand) -> None:
    text = rand.text(6000).encode()
    t = features_of("a.txt", text)
    assert (t.type, t.utf8, t.random) == ("text", True, False)
    b = features_of("a.txt", base64.b64encode(os.urandom(6000)))
    assert (b.type, b.encoded) == ("encoded", "b64")
    h = features_of("a.txt", os.urandom(3000).hex().encode())
    assert (h.type, h.encoded) == ("encoded", "hex")
    pem_like = base64.b64encode(text)  # base64 of text is not random: not "encoded" random
    assert features_of("a.txt", pem_like).encoded is None
    r = features_of("a.bin", os.urandom(200_000))
    assert (r.type, r.random) == ("data", True)
    z = features_of("a.bin", bytes(100_000))
    assert z.type == "zeros"
    u16 = features_of("export.txt", "\ufeffid;nom;montant\r\n1;DUPONT;45\r\n".encode("utf-16-le") * 50)
    assert u16.type == "text"
    fake = features_of("export.txt", b"\xff\xfe" + os.urandom(5000))  # a BOM in front of ciphertext
    assert fake.type == "data" and fake.random


def test_features_round_trip_and_small(rand: fm.Rand, tmp_path: Path) -> None:
    samples = [
        features_of("a.docx", fm.docx(rand, 5000)),
        features_of("a.bin", os.urandom(300_000)),
        features_of("a.txt", rand.text(3000).encode()),
        features_of("x.dcm", fm.dicom(rand, 2_000_000)),
    ]
    import json

    from rempart.detect.features import FileFeatures

    for f in samples:
        d = f.to_dict()
        assert FileFeatures.from_dict(json.loads(json.dumps(d))) == f
        assert len(json.dumps(d)) < 400

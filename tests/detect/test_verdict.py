"""compare(prev, cur) on real file versions."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from detect_helpers import features_of

from detection import formats as fm
from rempart.detect import verdict as v


def _ctr(data: bytes) -> bytes:
    return Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor().update(data)


def _every_other_16(data: bytes) -> bytes:
    out = bytearray(data)
    for off in range(0, len(out), 32):
        out[off : off + 16] = os.urandom(len(out[off : off + 16]))
    return bytes(out)


def test_unchanged_and_ok_edits(rand: fm.Rand) -> None:
    a = features_of("a.docx", fm.docx(rand, 5000))
    assert v.compare(a, a).kind == v.UNCHANGED
    b = features_of("a.docx", fm.docx(rand, 7000))
    assert v.compare(a, b) == v.FileVerdict(v.OK, False)


def test_encryption_in_place_of_each_format(rand: fm.Rand, tmp_path: Path) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "db.sqlite")
    con.execute("CREATE TABLE t(x TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 5,) for i in range(5000)])
    con.commit()
    con.close()
    files = {
        "a.docx": fm.docx(rand, 8000, 30000),
        "a.pdf": fm.pdf(rand, 3, 50000),
        "a.jpg": fm.jpeg(rand, 300_000),
        "a.dcm": fm.dicom(rand, 1_000_000),
        "db.sqlite": (tmp_path / "db.sqlite").read_bytes(),
        "a.txt": rand.text(5000).encode(),
    }
    for name, data in files.items():
        prev = features_of(name, data)
        for attack in (_ctr, _every_other_16, lambda d: _ctr(d[:4096]) + d[4096:]):
            fv = v.compare(prev, features_of(name, attack(data)))
            assert fv.damaged, (name, fv)
            assert fv.kind in (v.BECAME_INVALID, v.BECAME_RANDOM)


def test_full_ciphertext_is_random_not_just_invalid(rand: fm.Rand) -> None:
    data = fm.docx(rand, 8000, 30000)
    fv = v.compare(features_of("a.docx", data), features_of("a.docx", _ctr(data)))
    assert fv == v.FileVerdict(v.BECAME_RANDOM, True, "no-tail") or fv.kind == v.BECAME_RANDOM


def test_legit_encryption_is_not_damage(rand: fm.Rand) -> None:
    docx = features_of("a.docx", fm.docx(rand, 8000))
    assert v.compare(docx, features_of("a.docx", fm.encrypted_ooxml(rand, 9000))) == v.FileVerdict(
        v.LEGIT_ENCRYPTED, False, "cfb"
    )
    pdf = features_of("a.pdf", fm.pdf(rand, 2))
    assert v.compare(pdf, features_of("a.pdf", fm.pdf(rand, 2, encrypted=True))).kind == v.LEGIT_ENCRYPTED
    new_zip = features_of("c.zip", fm.aes_zip(rand, [("x", 1000)]))
    assert v.compare(None, new_zip).kind == v.LEGIT_ENCRYPTED


def test_text_to_base64_and_wiped(rand: fm.Rand) -> None:
    text = rand.text(6000).encode()
    prev = features_of("a.txt", text)
    assert v.compare(prev, features_of("a.txt", base64.b64encode(_ctr(text)))).kind == v.BECAME_ENCODED
    docx = features_of("a.docx", fm.docx(rand, 5000))
    assert v.compare(docx, features_of("a.docx", bytes(docx.size))) == v.FileVerdict(v.WIPED, True, "zeros")


def test_generic_data_random_regions() -> None:
    record = b"".join(
        i.to_bytes(4, "little") + b"\x00\x01|DUPONT              |jean    |rue des lilas    |" for i in range(30000)
    )  # fixed-size binary records, as a proprietary practice database writes them
    prev = features_of("DENTAL.DAT", record)
    assert prev.type == "data" and not prev.random
    out = bytearray(record)
    for off in range(0, len(out), 256):
        out[off : off + 64] = os.urandom(64)
    fv = v.compare(prev, features_of("DENTAL.DAT", bytes(out)))
    assert fv.kind == v.RANDOM_REGIONS and fv.damaged
    edited = bytearray(record)
    edited[500_000:500_040] = b"|MARTIN              |paul    |avenue foc"
    assert not v.compare(prev, features_of("DENTAL.DAT", bytes(edited))).damaged
    rnd = features_of("vault.hc", os.urandom(500_000))  # never structured: no verdict either way
    assert v.compare(rnd, features_of("vault.hc", os.urandom(500_000))).kind == v.OK


def test_new_files(rand: fm.Rand) -> None:
    assert v.compare(None, features_of("a.jpg", fm.jpeg(rand, 50000))).kind == v.NEW
    assert v.compare(None, features_of("a.jpg", os.urandom(50000))) .kind == v.NEW_UNREADABLE
    assert v.compare(None, features_of("a.jpg.locked", os.urandom(50000))).kind == v.NEW_RANDOM
    assert not v.compare(None, features_of("res.pak", os.urandom(50000))).damaged


def test_new_malformed_file_is_not_damage_but_random_is(rand: fm.Rand) -> None:
    data = bytearray(fm.dicom(rand, 200_000))
    data[200:204] = b"\xff\xff\xff\xff"  # a vendor's broken meta element
    broken = features_of("IMG.dcm", bytes(data))
    assert broken.valid is False
    assert v.compare(None, broken) == v.FileVerdict(v.NEW, False, ".dcm:dicom:invalid")
    assert v.compare(None, features_of("IMG.dcm", os.urandom(200_000))).damaged


def test_one_compressed_blob_in_a_growing_data_file_is_not_damage() -> None:
    record = b"".join(i.to_bytes(4, "little") + b"\x00\x01|note de suivi du patient, rien a signaler|" for i in range(20000))
    prev = features_of("mail.pst", record)
    out = bytearray(record)
    for off in range(0, len(out), 50_000):  # many ranges touched by small edits ...
        out[off + 100 : off + 104] = b"EDIT"
    out[400_000:404_096] = os.urandom(4096)  # ... and one new compressed attachment
    assert not v.compare(prev, features_of("mail.pst", bytes(out))).damaged


def test_jpeg_with_embedded_preview_stays_valid(rand: fm.Rand) -> None:
    from rempart.detect.formats_media import _SCAN_OK, ff_violations
    from rempart.detect.sampling import sample_plan

    total = 400_000
    off, n = sample_plan(total)[5]  # put the preview's header inside a sampled middle block
    cut = off + 100
    main = fm.jpeg(rand, cut + 50_000)[: cut - 2].rstrip(b"\xff") + b"\xff\xd9"
    data = main + fm.jpeg(rand, total - len(main) - 2500)  # MPF: a second image after the first EOI
    data += bytes(total - len(data))
    assert len(data) == total
    block = data[off : off + n]
    assert ff_violations(block, _SCAN_OK) > 1  # a strict scan check would call this photo broken
    assert features_of("IMG.jpg", data).valid

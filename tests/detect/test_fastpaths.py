"""The shortcuts taken to cut detection's CPU cost give the same answers as the long way."""

from __future__ import annotations

import io
import os
import random
import sqlite3
import struct
import zipfile
import zlib
from datetime import UTC, datetime

import pytest
from detect_helpers import features_of

from detection import formats as fm
from rempart.detect.assess import assess_run
from rempart.detect.features import FileFeatures
from rempart.detect.judge import RunJudge
from rempart.detect.ledger import DamageLedger
from rempart.detect.sampling import SampleView, sample_plan
from rempart.snapshot.pipeline import collect_samples


@pytest.mark.parametrize("seed", range(40))
def test_collect_samples_equals_slicing_the_plan(seed: int) -> None:
    """Whatever the chunk boundaries, the archiver's capture equals the planned slices."""
    r = random.Random(seed)
    size = r.choice([1, 100, 4096, 65536, 65537, 70_000, 300_000, 2_000_000]) + r.randrange(5000)
    data = r.randbytes(size)
    plan = sample_plan(size)
    out: list[tuple[int, bytes]] = []
    offset = 0
    view = memoryview(data)
    while offset < size:
        n = min(size - offset, r.choice([1, 7, 4096, 16384, 65536, 100_000]) + r.randrange(3000))
        collect_samples(plan, out, offset, view[offset : offset + n])
        offset += n
    assert out == [(off, data[off : off + n]) for off, n in plan]


def test_sample_view_get_stops_at_later_ranges() -> None:
    view = SampleView(100_000, [(0, b"a" * 8192), (40_960, b"b" * 4096), (95_904, b"c" * 4096)])
    assert view.get(40_960, 4) == b"bbbb"
    assert view.get(40_000, 4) is None  # between ranges
    assert view.get(99_996, 4) == b"cccc"
    assert view.get(8190, 4) is None  # runs past the head
    unsorted = SampleView(100_000, [(95_904, b"c" * 4096), (0, b"a" * 8192)])
    assert unsorted.head == b"a" * 8192 and unsorted.tail == b"c" * 4096


def _with_zip64_records(data: bytes) -> bytes:
    """A valid zip with zip64 end records (and the plain EOCD) as some writers always add them:
    the EOCD's central-directory offset + size then no longer ends at the EOCD."""
    eocd = data.rfind(b"PK\x05\x06")
    _d1, _d2, n_disk, n_total, cd_size, cd_off, _clen = struct.unpack_from("<HHHHIIH", data, eocd + 4)
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, n_disk, n_total, cd_size, cd_off)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, eocd, 1)
    return data[:eocd] + record + locator + data[eocd:]


def test_zip64_end_records_found_before_the_eocd() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(20):
            zf.writestr(f"doc/{i}.txt", f"line {i}\n" * 500)
    data = _with_zip64_records(buf.getvalue())
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # Python reads it
    assert features_of("a.zip", data).valid is True
    # the locator anywhere else in the tail (stored member data) does not excuse a bad offset
    plain = buf.getvalue()
    eocd = plain.rfind(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", plain, eocd + 16)[0]
    broken = plain[:eocd + 16] + struct.pack("<I", cd_off + 1) + plain[eocd + 20:]
    assert features_of("a.zip", broken).why == "bad-central-directory-offset"


def test_pdf_encrypt_key_in_an_xref_stream_dictionary_mid_file(rand: fm.Rand) -> None:
    """/Encrypt in a cross-reference stream's dictionary, where startxref points (a sampled block
    far from both ends of a large file), is still seen; the same PDF without it is not encrypted."""
    total = 400_000
    xref_at = sample_plan(total)[6][0]  # a middle block
    filler = rand.bytes(total)

    def build(encrypt: bool) -> bytes:
        head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
        extra = b" /Encrypt 41 0 R" if encrypt else b" /Info 41 0 R   "
        xref_obj = b"40 0 obj\n<< /Type /XRef /Size 42 /Root 1 0 R%s /W [1 4 2] >>\nstream\n" % extra
        tail = b"\nstartxref\n%d\n%%%%EOF\n" % xref_at
        data = head + filler[: xref_at - len(head)] + xref_obj
        data += filler[len(data) : total - len(tail)] + tail
        assert len(data) == total
        return data

    enc = build(True)
    assert 8192 < enc.find(b"/Encrypt") < total - 8192
    feats = features_of("report.pdf", enc)
    assert (feats.type, feats.valid, feats.enc) == ("pdf", True, True)
    plain = features_of("report.pdf", build(False))
    assert (plain.type, plain.valid, plain.enc) == ("pdf", True, False)


def test_note_content_scored_only_for_note_extensions() -> None:
    note = (b"All your files are encrypted. To decrypt them pay 0.5 bitcoin to our wallet. "
            b"Download Tor Browser and visit our .onion site. Do not rename files.\n") * 3
    assert features_of("INFO.txt", note).note >= 3
    assert features_of("info", note).note >= 3
    assert features_of("export.csv", note).note == 0  # an export is never a note


def test_pairing_indexes_only_with_deletions() -> None:
    def indexes(db: sqlite3.Connection) -> set[str]:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}

    feats = FileFeatures("text", 10, ".txt", hashes=(zlib.crc32(b"x"),), random=False)
    db = sqlite3.connect(":memory:")
    judge = RunJudge(db)
    for i in range(600):
        judge.add_change(f"d/{i}.txt", None, feats)
    judge.finish()
    assert indexes(db) == set()
    assert judge.healthy_change("d/5.txt") and not judge.healthy_change("d/nope.txt")
    assert indexes(db) == {"chg_path"}
    db2 = sqlite3.connect(":memory:")
    judge2 = RunJudge(db2)
    for i in range(600):
        judge2.add_change(f"d/{i}.txt", None, feats)
    judge2.add_deletions([("d/old.txt", feats)])
    judge2.finish()
    assert {"chg_fp", "chg_dir", "del_fp", "del_dir", "del_path"} <= indexes(db2)


def test_run_without_deletions_keeps_plain_rows_out_of_sqlite_and_still_heals() -> None:
    """A run with no deletions writes only damaged and note rows; the others are still counted
    by kind, and a ledger entry whose file changed back to healthy is healed."""
    t0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
    ledger = DamageLedger()
    ledger.add("docs/letter.txt", "became-invalid", t0, "snap-1")
    ledger.add("docs/other.txt", "became-invalid", t0, "snap-1")
    text = FileFeatures("text", 900, ".txt", hashes=(1,), random=False, utf8=True)
    text2 = FileFeatures("text", 950, ".txt", hashes=(2,), random=False, utf8=True)
    wiped = FileFeatures("zeros", 900, ".txt", hashes=(3,))
    db = sqlite3.connect(":memory:")
    judge = RunJudge(db)
    judge.add_change("docs/letter.txt", text, text2)  # healthy again
    for i in range(30):
        judge.add_change(f"docs/new-{i}.txt", None, text)
    judge.add_change("docs/wiped.txt", text, wiped)
    result = assess_run(judge, total_files=100, ledger=ledger, time=t0, parent="snap-2")
    assert db.execute("SELECT COUNT(*) FROM chg").fetchone()[0] == 1  # only the damaged row
    assert result.counts["new"] == 30 and result.counts["ok"] == 1 and result.counts["wiped"] == 1
    assert "docs/letter.txt" not in result.ledger.entries  # healed
    assert "docs/other.txt" in result.ledger.entries and "docs/wiped.txt" in result.ledger.entries
    assert result.damaged_paths == ["docs/wiped.txt"]


def _sample_files() -> list[tuple[str, bytes]]:
    r = random.Random(7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("word/document.xml", "<w:document>" + "lorem ipsum " * 200 + "</w:document>")
        z.writestr("[Content_Types].xml", "<Types/>")
    note = b"All your files are encrypted. To decrypt them pay bitcoin. Visit our .onion site with Tor.\n" * 3
    return [
        ("letter.txt", b"Dear patient, your appointment is on Monday.\n" * 40),
        ("report.docx", buf.getvalue()),
        ("scan.docx", r.randbytes(30_000)),  # a document that is random bytes: new-random
        ("README-DECRYPT.txt", note),
        ("empty.csv", b""),
        ("photo.jpg", b"\xff\xd8\xff\xe0" + r.randbytes(5000)),
        ("export.csv", b"id;name;date\n" + b"1;Dupont;2026-01-02\n" * 300),
        ("blob.b64", __import__("base64").b64encode(r.randbytes(6000))),
        ("archive.zip", buf.getvalue()),
    ]


def test_a_new_file_judged_in_the_reading_process_gives_the_same_row() -> None:
    """read_verdict (run by the archiver's reading processes, its verdict sent through marshal)
    and add_change(None, ...) in the backup process store the same row for every kind of file;
    the features text it gives is canonical JSON of the same features."""
    import json
    import marshal

    from rempart.detect.judge import read_verdict

    rows = []
    for how in ("parent", "reader"):
        db = sqlite3.connect(":memory:")
        judge = RunJudge(db)
        for name, data in _sample_files():
            path = f"Practice/Docs/{name}"
            plan = sample_plan(len(data))
            samples = [(off, data[off : off + n]) for off, n in plan]
            feats_json, judged = read_verdict(name, len(data), samples)
            cur = FileFeatures.from_dict(json.loads(feats_json))
            assert cur == features_of(name, data)
            assert feats_json == json.dumps(cur.to_dict(), sort_keys=True, separators=(",", ":"))
            if how == "parent":
                judge.add_change(path, None, cur)
            else:
                judge.add_judged_new(path, marshal.loads(marshal.dumps(judged)))
        judge.add_deletions([("Practice/Docs/old.txt", None)])  # with deletions every row is written
        judge.finish()
        rows.append(db.execute("SELECT path, dir, new, kind, damaged, ok, db, fp, arch, cand_kind, cand_inv, "
                               "size, enc, note FROM chg ORDER BY seq").fetchall())
    assert len(rows[0]) == len(_sample_files())
    assert {r[3] for r in rows[0]} >= {"new", "new-random"}  # the sample covers several verdicts
    assert any(r[13] for r in rows[0])  # and a ransom note
    assert rows[0] == rows[1]


def test_paths_that_are_not_utf8_are_kept_and_given_back_unchanged() -> None:
    """A name that was not UTF-8 on disk arrives as lone surrogates (os.fsdecode), which SQLite
    text cannot hold: such rows go in as BLOBs, and every query gives the same str back."""
    t0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
    text = FileFeatures("text", 900, ".txt", hashes=(1,), random=False, utf8=True)
    wiped = FileFeatures("zeros", 900, ".txt", hashes=(3,))
    odd_dir = os.fsdecode(b"docs/dossier-\xe9")
    wiped_path, healthy_path, gone_path = (f"{odd_dir}/{n}" for n in ("lettre.txt", os.fsdecode(b"r\xe9sum\xe9.txt"),
                                                                        os.fsdecode(b"vieux-\xff.txt")))
    ledger = DamageLedger()
    ledger.add(healthy_path, "became-invalid", t0, "snap-1")
    db = sqlite3.connect(":memory:")
    judge = RunJudge(db)
    judge.add_change(wiped_path, text, wiped)
    judge.add_change(healthy_path, text, text)
    judge.add_change("docs/plain.txt", text, wiped)  # a UTF-8 name in the same batch
    judge.add_deletions([(gone_path, text)])
    result = assess_run(judge, total_files=100, ledger=ledger, time=t0, parent="snap-2")
    assert sorted(result.damaged_paths) == sorted(["docs/plain.txt", wiped_path])
    assert dict(judge.damaged()) == {wiped_path: "wiped", "docs/plain.txt": "wiped"}
    assert list(judge.remaining_paths()) == [gone_path] and judge.deleted(gone_path)
    assert healthy_path not in result.ledger.entries  # healed: found by its (odd) path
    assert wiped_path in result.ledger.entries

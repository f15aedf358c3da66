"""Backup-level rules, the damage ledger and canaries."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from detect_helpers import features_of

from detection import formats as fm
from rempart.detect.assess import DetectionConfig, assess_backup
from rempart.detect.canary import CanaryStatus, canary_files, check_canaries
from rempart.detect.ledger import DamageLedger
from rempart.detect.stats import note_name, note_score

T = datetime(2026, 3, 2, 9, tzinfo=UTC)
NOTE = b"Your files are encrypted. To decrypt them pay 1 BTC. Contact us on Tor Browser: %s.onion" % (b"a" * 56)


def _assess(changes, deletions=(), *, ledger=None, total=1000, when=T, parent="s1", canaries=None, families=None):
    return assess_backup(
        changes, deletions, total_files=total, ledger=ledger or DamageLedger(), time=when, parent=parent,
        canaries=canaries, family_counts=families,
    )


def test_quiet_backup_is_clean(rand: fm.Rand) -> None:
    a, b = features_of("a.docx", fm.docx(rand, 4000)), features_of("a.docx", fm.docx(rand, 5000))
    res = _assess([("Letters/a.docx", a, b), ("Letters/new.pdf", None, features_of("new.pdf", fm.pdf(rand, 1)))])
    assert res.verdict == "clean" and res.rules == [] and res.clean_point is None
    assert res.counts == {"ok": 1, "new": 1}


def test_summary_names_no_file(rand: fm.Rand) -> None:
    data = fm.docx(rand, 4000)
    prev = features_of("a.docx", data)
    changes = [(f"Patients/DUPONT Jean/lettre{i}.docx", prev, features_of("a.docx", os.urandom(len(data)))) for i in range(5)]
    res = _assess(changes)
    assert res.suspicious and len(res.damaged_paths) == 5
    summary = res.summary()
    assert set(summary) == {"verdict", "counts", "score", "rules", "clean_point"} and summary["clean_point"] == "s1"
    text = json.dumps(summary)
    assert "DUPONT" not in text and "lettre" not in text and "Patients" not in text


def test_ransom_notes_in_three_folders_alone_alert() -> None:
    note = features_of("README_DECRYPT.txt", NOTE)
    assert note.note >= 3
    res = _assess([(f"d{i}/README_DECRYPT.txt", None, note) for i in range(3)])
    assert "ransom-notes" in res.rules
    one = _assess([("d0/notes.txt", None, features_of("notes.txt", b"Rendez-vous mardi, apporter la radio."))])
    assert one.verdict == "clean"


def test_note_names_and_scores() -> None:
    for name in ("README_DECRYPT.txt", "HOW_TO_RECOVER.html", "!!!READ_ME!!!.txt", "_readme.txt", "RESTORE-MY-FILES.TXT"):
        assert note_name(name), name
    for name in ("readme.txt", "lettre.docx", "photo.jpg", "compta.xlsx"):
        assert not note_name(name), name
    assert note_score(b"Madame, votre rendez-vous de controle est fixe au 3 mars. Cordialement.") == 0


def test_renamed_encrypted_siblings_are_damage(rand: fm.Rand) -> None:
    changes, deletions = [], []
    for i in range(4):
        data = fm.pdf(rand, 2, 20000)
        deletions.append((f"Inv/f{i}.pdf", features_of(f"f{i}.pdf", data)))
        changes.append((f"Inv/f{i}.pdf.locked", None, features_of(f"f{i}.pdf.locked", os.urandom(len(data) + 16))))
    res = _assess(changes, deletions)
    assert res.counts["replaced"] == 4 and res.suspicious
    assert res.damaged_paths == [f"Inv/f{i}.pdf" for i in range(4)]


def test_moves_and_zip_then_delete_are_benign(rand: fm.Rand) -> None:
    docs = [(f"Old/l{i}.docx", features_of("l.docx", fm.docx(rand, 3000 + i))) for i in range(60)]
    moved = [(p.replace("Old/", "New/"), None, f) for (p, f) in docs]
    res = _assess(moved, docs, total=100)
    assert res.verdict == "clean" and res.counts["moved"] == 60
    archive = features_of("Old.zip", fm.aes_zip(rand, [(f"l{i}.docx", 3000) for i in range(60)]))
    res = _assess([("Old.zip", None, archive)], [(p.replace("Old/", "Old/sub/"), f) for p, f in docs], total=100)
    assert res.verdict == "clean" and res.counts["archived"] == 60


def test_mass_deletion_alerts(rand: fm.Rand) -> None:
    docs = [(f"Docs/l{i}.docx", features_of("l.docx", fm.docx(rand, 3000 + i))) for i in range(30)]
    res = _assess([], docs, total=1000, families={"zip": 40})
    assert res.rules == ["mass-deletion"] and res.clean_point == "s1"
    few = _assess([], docs[:5], total=1000, families={"zip": 40})
    assert few.verdict == "clean"


def test_canaries() -> None:
    a = canary_files("Documents/Letters", b"seed-1")
    assert a == canary_files("Documents/Letters", b"seed-1")
    assert a != canary_files("Documents/Letters", b"seed-2")
    assert a != canary_files("Imaging", b"seed-1")
    for c in a:
        f = features_of(c.name, c.content)
        assert f.valid is True or f.type == "text", (c.name, f)
    expected = {f"Documents/Letters/{c.name}": c.digest for c in a}
    assert not check_canaries(expected, dict(expected)).tripped
    first = next(iter(expected))
    assert check_canaries(expected, {**expected, first: "0" * 64}).modified == 1
    gone = check_canaries(expected, {**expected, first: None})
    assert gone.deleted == 1 and gone.tripped
    moved = check_canaries(expected, {**expected, first: None}, present={expected[first]})
    assert moved.moved == 1 and not moved.tripped
    res = _assess([], canaries=CanaryStatus(planted=2, modified=1))
    assert res.rules == ["canary"]


def test_slow_attack_caught_by_ledger_with_right_clean_point(rand: fm.Rand) -> None:
    ledger = DamageLedger()
    alert_day = None
    for day in range(10):
        when = T + timedelta(days=day)
        data = fm.docx(rand, 4000)
        change = [(f"L/d{day}.docx", features_of("x.docx", data), features_of("x.docx", os.urandom(len(data))))]
        res = _assess(change, ledger=ledger, when=when, parent=f"s{day}")
        ledger = DamageLedger.from_dict(json.loads(json.dumps(res.ledger.to_dict())))  # kept as JSON by the agent
        if res.suspicious:
            alert_day = day
            assert res.clean_point == "s0"  # the snapshot before the first damaged file was seen
            assert res.rules == ["damage-accumulated"]
            break
        assert res.verdict == "clean"
    assert alert_day == 2  # the third damaged file within the window


def test_ledger_heals_and_expires(rand: fm.Rand) -> None:
    data = fm.docx(rand, 4000)
    good = features_of("a.docx", data)
    half = features_of("a.docx", data[: len(data) // 2])  # caught mid-save
    res = _assess([("a.docx", good, half)])
    assert res.ledger.damaged_in_window(T) == 1 and res.verdict == "clean"
    res = _assess([("a.docx", half, good)], ledger=res.ledger, when=T + timedelta(hours=4))
    assert res.ledger.entries == {}
    res = _assess([("b.docx", good, half)])
    later = _assess([], ledger=res.ledger, when=T + timedelta(days=31))
    assert later.ledger.entries == {}
    res = _assess([("c.docx", good, half), ("d.docx", good, features_of("d.docx", os.urandom(len(data))))])
    gone = _assess([], [("c.docx", half), ("d.docx", None)], ledger=res.ledger, when=T + timedelta(hours=4))
    assert list(gone.ledger.entries) == ["d.docx"]  # a deleted half-saved file is forgotten, ciphertext is not


def test_fraction_threshold_scales_with_practice_size(rand: fm.Rand) -> None:
    data = fm.docx(rand, 4000)
    prev = features_of("a.docx", data)
    changes = [(f"a{i}.docx", prev, features_of("a.docx", os.urandom(len(data)))) for i in range(5)]
    cfg = DetectionConfig()
    assert max(cfg.ledger_min_files, int(cfg.ledger_fraction * 20_000)) == 40
    res = assess_backup(changes, [], total_files=20_000, ledger=DamageLedger(), time=T, parent="s1")
    assert res.verdict == "clean"  # 5 of 20 000 is below 0.2 %, no note, no canary, no database
    db_prev = features_of("cabinet.sqlite", b"SQLite format 3\x00" + bytes(4080))
    db = [("cabinet.db", features_of("cabinet.db", fm.docx(rand, 100)), features_of("cabinet.db", os.urandom(9000)))]
    assert db_prev.db
    assert "database-damaged" in assess_backup(db, [], total_files=20_000, ledger=DamageLedger(), time=T, parent="s1").rules


def test_input_ledger_untouched_and_plain_path_deletions(rand: fm.Rand) -> None:
    ledger = DamageLedger()
    data = fm.docx(rand, 4000)
    prev = features_of("a.docx", data)
    res = _assess([("a.docx", prev, features_of("a.docx", os.urandom(len(data))))], ["old/gone.txt"], ledger=ledger)
    assert ledger.entries == {} and not ledger.incident_open
    assert list(res.ledger.entries) == ["a.docx"] and res.counts["deleted"] == 1


def test_incident_stays_open_until_acknowledged(rand: fm.Rand) -> None:
    data = fm.docx(rand, 4000)
    prev = features_of("a.docx", data)
    bad = [(f"a{i}.docx", prev, features_of("a.docx", os.urandom(len(data)))) for i in range(3)]
    first = _assess(bad, parent="s7")
    assert first.rules == ["damaged-files"] and first.clean_point == "s7"
    later = _assess([], ledger=first.ledger, when=T + timedelta(hours=5), parent="s8")
    assert later.rules == ["damage-accumulated"] and later.clean_point == "s7"  # the damage is still there
    later.ledger.entries.clear()  # even with nothing left to count, the incident holds the clean point
    still = _assess([], ledger=later.ledger, when=T + timedelta(hours=7), parent="s9")
    assert still.rules == ["incident-open"] and still.clean_point == "s7"
    ack = still.ledger.copy()
    ack.acknowledge()
    assert _assess([], ledger=ack, when=T + timedelta(hours=9), parent="s9").verdict == "clean"

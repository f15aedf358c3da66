"""Detection inside real backups, the verdict in `snapshots`, and restores after an attack."""

from __future__ import annotations

import os
import sqlite3
import sys
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def make_practice(root: Path, n: int = 40) -> None:
    for i in range(n):
        folder = root / f"patients/{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(folder / f"letter{i}.docx", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("word/document.xml", f"<doc>Madame {i}, " + "texte " * 200 + "</doc>")
        (folder / f"notes{i}.txt").write_text(f"Patient {i}: " + "soins dentaires, contrôle. " * 50)
    db = sqlite3.connect(root / "cabinet.db")
    db.execute("CREATE TABLE rdv (id INTEGER PRIMARY KEY, nom TEXT)")
    db.executemany("INSERT INTO rdv (nom) VALUES (?)", [(f"patient {i}",) for i in range(2000)])
    db.commit()
    db.close()


def encrypt_in_place(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    path.write_bytes(enc.update(data) + enc.finalize())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide: same name, size, mtime


def test_attack_detected_and_last_clean_and_per_file_restore(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_practice(src)
    r = cli("backup", str(src), "--json")
    assert r.code == 0, r.err
    assert r.json()["detection"]["verdict"] == "clean"
    # a normal day: an edit and a new letter
    (src / "patients/1/notes1.txt").write_text("Patient 1: couronne posée. " * 40)
    (src / "patients/2/new-letter.txt").write_text("Nouveau patient " * 30)
    r = cli("backup", str(src), "--json")
    assert r.code == 0 and r.json()["detection"]["verdict"] == "clean", r.out
    clean_id = r.json()["snapshot"]
    good = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    # the attack, plus legitimate work the same day
    victims = sorted(src.rglob("letter*.docx"))[:25]
    for v in victims:
        encrypt_in_place(v)
    (src / "patients/3/after-attack-work.txt").write_text("Rendez-vous de 14h " * 20)
    r = cli("backup", str(src), "--json")
    assert r.code == 30, r.out + r.err
    det = r.json()["detection"]
    assert det["verdict"] == "suspicious" and det["clean_point"] == clean_id
    assert "damaged" in " ".join(det["rules"]) or det["counts"].get("damaged", 0) >= 20
    snaps = cli("snapshots", "--json").json()
    assert [s["verdict"] for s in snaps] == ["clean", "clean", "suspicious"]
    assert all("letter" not in str(s["detection"]) for s in snaps)  # the vault never sees names

    r = cli("restore", "--last-clean", "--target", str(tmp_path / "clean"), "--kit", str(repo.kit), "--json")
    assert r.code == 0, r.err
    assert r.json()["snapshot"] == clean_id
    out = tmp_path / "clean" / src.relative_to("/")
    for p, data in good.items():
        assert (out / p.relative_to(src)).read_bytes() == data

    r = cli("restore", "--per-file", "--target", str(tmp_path / "pf"), "--kit", str(repo.kit), "--json")
    assert r.code == 0, r.err
    assert r.json()["replaced"] == len(victims)
    out = tmp_path / "pf" / src.relative_to("/")
    for v in victims:
        assert (out / v.relative_to(src)).read_bytes() == good[v]  # each damaged file: last good version
    assert (out / "patients/3/after-attack-work.txt").read_text().startswith("Rendez-vous")  # kept
    assert (out / "patients/1/notes1.txt").read_text().startswith("Patient 1: couronne")

    # the incident stays open until an operator acknowledges it, then backups are judged afresh
    for v in victims:
        v.write_bytes(good[v])
    r = cli("backup", str(src), "--json")
    assert r.code == 30 and "incident-open" in r.json()["detection"]["rules"]
    r = cli("backup", str(src), "--json", "--acknowledge-incident")
    assert r.code == 0, r.out
    assert r.json()["detection"]["verdict"] == "clean"


def test_benign_day_raises_nothing(repo, cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_practice(src)
    assert cli("backup", str(src)).code == 0
    # bulk import of "x-rays" (random-looking), a folder zipped then deleted, renames
    imports = src / "radios"
    imports.mkdir()
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from detection import formats as fm  # the benchmark's realistic file generators

    r = fm.Rand(7)
    for i in range(60):
        (imports / f"img{i}.dcm").write_bytes(fm.dicom(r, 30_000, compressed=i % 3 == 0))
    with zipfile.ZipFile(src / "archive-2019.zip", "w") as z:
        for p in (src / "patients/4").iterdir():
            z.write(p, p.name)
    for p in list((src / "patients/4").iterdir()):
        p.unlink()
    for p in (src / "patients/0").glob("notes*.txt"):
        p.rename(p.with_name("ancien-" + p.name))
    r = cli("backup", str(src), "--json")
    assert r.code == 0, r.out
    assert r.json()["detection"]["verdict"] == "clean"

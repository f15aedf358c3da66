"""Deterministic generator of a dental practice's data folder, and one working day of changes.

    python bench/datagen.py generate DIR --size-mb 200 --seed 1
    python bench/datagen.py mutate DIR --day 3 --seed 1

The folder holds a real SQLite practice database (patients, appointments, invoices, scans), a
proprietary fixed-record DENTAL.DAT, nightly gzip dumps, DICOM X-rays (native 12-bit and
JPEG-encapsulated), JPEG photos, DOCX letters, XLSX accounting, PDF invoices, CSV exports, text
notes, program binaries and a few exact duplicates. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import sqlite3
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detection import formats as fm

DB = "Practice/Database/cabinet.sqlite"
DAT = "Practice/Database/DENTAL.DAT"
DUMPS = "Practice/Database/Dumps"
XRAYS = "Practice/Imaging/XRays"
PHOTOS = "Practice/Imaging/Photos"
LETTERS = "Practice/Documents/Letters"
INVOICES = "Practice/Documents/Invoices"
ACCOUNTS = "Practice/Documents/Accounting"
NOTES = "Practice/Documents/Notes"
EXPORTS = "Practice/Exports"
SOFTWARE = "Practice/Software/DentalPro"
COPIES = "Practice/Documents/Archive/Copies"
DAT_RECORD = 512
# Share of the total size per kind of data.
SHARES = {"db": 0.10, "dat": 0.05, "xray": 0.48, "photo": 0.15, "docx": 0.05, "xlsx": 0.02,
          "pdf": 0.06, "csv": 0.02, "txt": 0.01, "exe": 0.05}


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _patient(r: fm.Rand) -> str:
    return f"P{r.rng.randint(1, 99999):06d}"


def _db_fill(con: sqlite3.Connection, r: fm.Rand, patients: int, scans_bytes: int, start: int = 0) -> None:
    con.executemany(
        "INSERT INTO patients(id, nom, prenom, naissance, adresse, telephone, notes) VALUES (?,?,?,?,?,?,?)",
        [
            (start + i, r.words(1).upper(), r.words(1).capitalize(), f"19{r.rng.randint(30, 99)}-0{r.rng.randint(1, 9)}-1{r.rng.randint(0, 9)}",
             f"{r.rng.randint(1, 200)} rue {r.words(2)}", f"06{r.rng.randint(10**7, 10**8 - 1)}", r.words(12))
            for i in range(patients)
        ],
    )
    con.executemany(
        "INSERT INTO appointments(patient_id, date, acte, duree) VALUES (?,?,?,?)",
        [(start + r.rng.randrange(max(patients, 1)), f"2025-{r.rng.randint(1, 12):02d}-{r.rng.randint(1, 28):02d}",
          r.words(3), r.rng.choice([15, 30, 45, 60])) for _ in range(patients * 3)],
    )
    con.executemany(
        "INSERT INTO invoices(patient_id, date, montant, statut, detail) VALUES (?,?,?,?,?)",
        [(start + r.rng.randrange(max(patients, 1)), "2025-05-01", r.rng.randint(20, 2500), r.rng.choice(["payee", "due"]),
          r.words(8)) for _ in range(patients * 2)],
    )
    done = 0
    while done < scans_bytes:
        size = r.rng.randint(20_000, 80_000)
        con.execute("INSERT INTO scans(patient_id, kind, data) VALUES (?,?,?)",
                    (r.rng.randrange(max(patients, 1)), "jpeg", fm.jpeg(r, size)))
        done += size


def _make_db(root: Path, r: fm.Rand, size: int) -> None:
    path = root / DB
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript(
        "PRAGMA page_size=4096; PRAGMA journal_mode=DELETE;"
        "CREATE TABLE patients(id INTEGER PRIMARY KEY, nom TEXT, prenom TEXT, naissance TEXT, adresse TEXT, telephone TEXT, notes TEXT);"
        "CREATE TABLE appointments(id INTEGER PRIMARY KEY, patient_id INT, date TEXT, acte TEXT, duree INT);"
        "CREATE TABLE invoices(id INTEGER PRIMARY KEY, patient_id INT, date TEXT, montant INT, statut TEXT, detail TEXT);"
        "CREATE TABLE scans(id INTEGER PRIMARY KEY, patient_id INT, kind TEXT, data BLOB);"
        "CREATE INDEX appt_patient ON appointments(patient_id);"
    )
    patients = max(200, size // 4000)
    _db_fill(con, r, patients, size // 2)
    con.commit()
    con.close()


def _dat_record(r: fm.Rand, i: int) -> bytes:
    text = f"{i:08d}|{r.words(1).upper():<20}|{r.words(1):<20}|{r.words(6):<80}|{r.rng.randint(0, 99999):05d}|".encode()
    return (struct.pack("<IIH", i, r.rng.randint(0, 2**31), r.rng.randint(0, 900)) + text).ljust(DAT_RECORD, b" ")[:DAT_RECORD]


def _make_dat(root: Path, r: fm.Rand, size: int) -> None:
    n = max(64, size // DAT_RECORD)
    pool = [_dat_record(r, i) for i in range(min(n, 2000))]
    body = b"".join(struct.pack("<I", i) + pool[i % len(pool)][4:] for i in range(n))
    _write(root, DAT, b"DENTDAT\x01" + struct.pack("<II", DAT_RECORD, n) + b"\x00" * (DAT_RECORD - 16) + body)


def _dump(root: Path, r: fm.Rand, day: int) -> None:
    lines = [f"INSERT INTO patients VALUES({i},'{r.words(1)}','{r.words(5)}');" for i in range(2000)]
    _write(root, f"{DUMPS}/cabinet-day{day:04d}.sql.gz", gzip.compress("\n".join(lines).encode(), 6, mtime=0))


def _xray(root: Path, r: fm.Rand, tag: str) -> None:
    patient = _patient(r)
    size = r.rng.randint(300_000, 3_000_000)
    data = fm.dicom(r, size, compressed=r.rng.random() < 0.25, patient=patient)
    _write(root, f"{XRAYS}/{2020 + r.rng.randint(0, 5)}/{patient}/{patient}_{tag}.dcm", data)


def _photo(root: Path, r: fm.Rand, tag: str) -> None:
    _write(root, f"{PHOTOS}/{_patient(r)}/IMG_{tag}.jpg", fm.jpeg(r, r.rng.randint(150_000, 900_000)))


def _letter(r: fm.Rand) -> bytes:
    return fm.docx(r, r.rng.randint(3000, 12000), r.rng.choice([0, r.rng.randint(5000, 40000)]))


def generate(root: Path, size_mb: int, seed: int) -> None:
    """Create the practice folder under ``root`` (about ``size_mb`` MiB)."""
    root = Path(root)
    r = fm.Rand(f"generate-{seed}")
    total = size_mb * 1024 * 1024
    budget = {k: int(v * total) for k, v in SHARES.items()}
    _make_db(root, r, budget["db"])
    _make_dat(root, r, budget["dat"])
    for d in range(3):
        _dump(root, r, -d - 1)
    floors = {"docx": 120, "pdf": 80, "txt": 150, "csv": 20, "xlsx": 20}  # a practice has many small files
    fillers = [
        ("xray", 1_650_000, lambda i: _xray(root, r, f"{i:05d}")),
        ("photo", 525_000, lambda i: _photo(root, r, f"{i:05d}")),
        ("docx", 25_000, lambda i: _write(root, f"{LETTERS}/{2019 + i % 6}/lettre_{i:05d}.docx", _letter(r))),
        ("xlsx", 30_000, lambda i: _write(root, f"{ACCOUNTS}/compta_{i:04d}.xlsx", fm.xlsx(r, r.rng.randint(200, 1500)))),
        ("pdf", 60_000, lambda i: _write(root, f"{INVOICES}/{2019 + i % 6}/facture_{i:05d}.pdf",
                                         fm.pdf(r, r.rng.randint(1, 3), r.rng.choice([0, 40_000, 90_000])))),
        ("csv", 40_000, lambda i: _write(root, f"{EXPORTS}/export_{i:04d}.csv", _csv(r, r.rng.randint(200, 1200)))),
        ("txt", 3_000, lambda i: _write(root, f"{NOTES}/{2019 + i % 6}/note_{i:05d}.txt",
                                        r.text(r.rng.randint(800, 5000)).encode("utf-8"))),
        ("exe", 400_000, lambda i: _write(root, f"{SOFTWARE}/bin/module{i:03d}.{'exe' if i % 7 == 0 else 'dll'}",
                                          fm.pe(r, r.rng.randint(50_000, 800_000)))),
    ]
    for kind, avg, make in fillers:
        for i in range(max(3, floors.get(kind, 0), budget[kind] // avg)):
            make(i)
    letters = sorted((root / LETTERS).rglob("*.docx"))
    for i, src in enumerate(letters[:: max(1, len(letters) // 12)]):
        _write(root, f"{COPIES}/copie_{i:03d}_{src.name}", src.read_bytes())


def _csv(r: fm.Rand, rows: int) -> bytes:
    lines = ["id;nom;date;acte;montant"]
    lines += [f"{i};{r.words(1).upper()};2025-{r.rng.randint(1, 12):02d}-{r.rng.randint(1, 28):02d};{r.words(2)};{r.rng.randint(20, 900)}"
              for i in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


def mutate_day(root: Path, day: int, seed: int) -> None:
    """One working day: DB pages change, new X-rays and photos, documents written and edited,
    a new nightly dump (keeping seven), a few deletions."""
    root = Path(root)
    r = fm.Rand(f"day-{seed}-{day}")
    con = sqlite3.connect(root / DB)
    (n_pat,) = con.execute("SELECT count(*) FROM patients").fetchone()
    (max_id,) = con.execute("SELECT coalesce(max(id), 0) FROM patients").fetchone()
    for _ in range(max(5, n_pat // 50)):
        con.execute("UPDATE patients SET notes=? WHERE id=?", (r.words(14), r.rng.randrange(max_id + 1)))
    _db_fill(con, r, r.rng.randint(3, 10), r.rng.randint(0, 3) * 60_000, start=max_id + 1)
    (max_appt,) = con.execute("SELECT coalesce(max(id), 0) FROM appointments").fetchone()
    con.executemany("DELETE FROM appointments WHERE id=?", [(r.rng.randrange(max_appt + 1),) for _ in range(5)])
    con.commit()
    con.close()
    dat = root / DAT
    if dat.exists():
        with dat.open("r+b") as f:
            n = (dat.stat().st_size - DAT_RECORD) // DAT_RECORD
            for _ in range(max(3, n // 100)):
                i = r.rng.randrange(n)
                f.seek(DAT_RECORD * (1 + i))
                f.write(_dat_record(r, i))
            f.seek(0, 2)
            f.write(b"".join(_dat_record(r, n + k) for k in range(r.rng.randint(5, 20))))
    _dump(root, r, day)
    dumps = sorted((root / DUMPS).glob("*.sql.gz"))
    for old in dumps[:-7]:
        old.unlink()
    scale = 1 + len(list((root / XRAYS).rglob("*.dcm"))) // 60  # a bigger practice takes more images
    for k in range(r.rng.randint(1, 4) * scale):
        _xray(root, r, f"d{day:03d}_{k:02d}")
    for k in range(r.rng.randint(1, 3) * scale):
        _photo(root, r, f"d{day:03d}_{k:02d}")
    for k in range(r.rng.randint(2, 6)):
        _write(root, f"{LETTERS}/2025/lettre_d{day:03d}_{k}.docx", _letter(r))
    for k in range(r.rng.randint(1, 4)):
        _write(root, f"{INVOICES}/2025/facture_d{day:03d}_{k}.pdf", fm.pdf(r, 1, r.rng.choice([0, 30_000])))
    existing = sorted((root / LETTERS).rglob("*.docx"))
    for path in r.rng.sample(existing, min(len(existing), r.rng.randint(1, 4))):
        path.write_bytes(_letter(r))
    sheets = sorted((root / ACCOUNTS).glob("*.xlsx"))
    if sheets:
        r.rng.choice(sheets).write_bytes(fm.xlsx(r, r.rng.randint(200, 1500)))
    _write(root, f"{EXPORTS}/export_jour.csv", _csv(r, r.rng.randint(100, 800)))
    _write(root, f"{NOTES}/2025/note_d{day:03d}.txt", r.text(r.rng.randint(500, 3000)).encode())
    notes = sorted((root / NOTES).rglob("*.txt"))
    if notes:
        with r.rng.choice(notes).open("a", encoding="utf-8") as f:
            f.write(r.text(200))
    drafts = sorted(p for p in (root / LETTERS).rglob("lettre_*.docx") if f"_d{day:03d}_" not in p.name)
    for path in r.rng.sample(drafts, min(len(drafts), r.rng.randint(1, 2))):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("dir", type=Path)
    g.add_argument("--size-mb", type=int, default=200)
    g.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mutate")
    m.add_argument("dir", type=Path)
    m.add_argument("--day", type=int, required=True)
    m.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "generate":
        generate(args.dir, args.size_mb, args.seed)
    else:
        mutate_day(args.dir, args.day, args.seed)
    files = [f for f in args.dir.rglob("*") if f.is_file()]
    print(f"{args.cmd}: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

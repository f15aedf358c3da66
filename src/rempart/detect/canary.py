"""Canary files: decoys the agent plants in watched folders; any change to one is an alert.

Names and contents are derived from a per-practice secret seed and the folder, so they are stable
from one run to the next (the agent can re-plant a missing one identically) yet differ between
practices (ransomware cannot learn a fixed list to skip). They sort early in a folder listing,
where encryptors that walk alphabetically start, and look like ordinary practice documents.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass

_PREFIXES = ["!", "0", "00_", "_", "~", "A"]
_WORDS = [
    "Archives", "Bilan", "Comptabilite", "Contrats", "Dossiers", "Factures", "Honoraires",
    "Inventaire", "Patients", "Planning", "Releves", "Devis", "Ordonnances", "Radios", "Mutuelles",
]
_EXTENSIONS = [".docx", ".pdf", ".txt", ".xlsx"]


@dataclass(frozen=True)
class CanaryFile:
    name: str
    content: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class CanaryStatus:
    planted: int = 0
    modified: int = 0
    deleted: int = 0
    moved: int = 0  # gone from its place but the same bytes are elsewhere (a folder was moved)

    @property
    def tripped(self) -> bool:
        return (self.modified + self.deleted) > 0


def _stream(seed: bytes, folder: str, label: str) -> bytes:
    return hmac.new(seed, f"rempart canary\x00{folder}\x00{label}".encode(), hashlib.sha256).digest()


def _text_body(rnd: bytes, title: str) -> bytes:
    lines = [title, "", "Document interne - ne pas modifier.", ""]
    for i in range(12):
        ref = rnd[i % len(rnd)] * 257 + rnd[(i + 7) % len(rnd)]
        lines.append(f"Ligne {i + 1:02d} ; reference {ref:06d} ; montant {ref % 997},{ref % 100:02d} EUR")
    return ("\r\n".join(lines) + "\r\n").encode()


def _docx(body: bytes, kind: str) -> bytes:
    import io  # only to plant canaries (first run), not to check them
    import zipfile

    buf = io.BytesIO()
    main = "word/document.xml" if kind == ".docx" else "xl/workbook.xml"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (
            ("[Content_Types].xml", b'<?xml version="1.0"?><Types/>'),
            ("_rels/.rels", b'<?xml version="1.0"?><Relationships/>'),
            (main, b'<?xml version="1.0"?><doc>' + body.replace(b"\r\n", b"<br/>") + b"</doc>"),
        ):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def _pdf(body: bytes) -> bytes:
    text = body.replace(b"(", b"[").replace(b")", b"]").split(b"\r\n")[0]
    stream = b"BT /F1 12 Tf 72 720 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def canary_files(folder: str, seed: bytes, count: int = 2) -> list[CanaryFile]:
    """The canaries for ``folder`` (a path relative to the backup root) under ``seed``."""
    out: list[CanaryFile] = []
    for i in range(count):
        rnd = _stream(seed, folder, f"file{i}")
        prefix = _PREFIXES[rnd[0] % len(_PREFIXES)]
        word = _WORDS[rnd[1] % len(_WORDS)]
        ext = _EXTENSIONS[(rnd[2] + i) % len(_EXTENSIONS)]
        year = 2015 + rnd[3] % 9
        name = f"{prefix}{word}_{year}{ext}"
        body = _text_body(rnd, f"{word} {year}")
        if ext in (".docx", ".xlsx"):
            content = _docx(body, ext)
        elif ext == ".pdf":
            content = _pdf(body)
        else:
            content = body
        if all(c.name != name for c in out):
            out.append(CanaryFile(name, content))
    return out


def check_canaries(
    expected: Mapping[str, str], observed: Mapping[str, str | None], present: Collection[str] = frozenset()
) -> CanaryStatus:
    """Compare planted canaries (path -> content digest) with what the backup saw (None: missing).

    ``present`` holds the digests of every file in the backup: a canary missing from its place
    whose exact bytes are elsewhere was moved with its folder (the agent re-plants it).
    """
    modified = deleted = moved = 0
    for path, digest in expected.items():
        seen = observed.get(path)
        if seen is None:
            if digest in present:
                moved += 1
            else:
                deleted += 1
        elif not hmac.compare_digest(seen, digest):
            modified += 1
    return CanaryStatus(planted=len(expected), modified=modified, deleted=deleted, moved=moved)

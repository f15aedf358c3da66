"""Ransom notes: recognisable file names and contents (English and French)."""

from __future__ import annotations

import re

NOTE_EXTENSIONS = frozenset({"", ".txt", ".html", ".htm", ".hta", ".rtf", ".url", ".png", ".bmp", ".jpg"})
_NAME = re.compile(
    r"(decrypt|d[eé]chiffr|recover|restore|ransom|ran[cç]on|unlock|"
    r"how[\W_]*to[\W_]*(back|get|decrypt|restore|recover|open)|"
    r"read[\W_]*me[\W_]*(now|first|for|to|!)|!!!|^_readme|^\+readme|"
    r"files[\W_]*(are[\W_]*)?encrypted|your[\W_]*files|fichiers[\W_]*chiffr|attention[\W_]*!)",
    re.IGNORECASE,
)
_ONION_V3 = re.compile(rb"[a-z2-7]{56}\.onion")
_ONION_ANY = re.compile(rb"[a-z2-7]{16,56}\.onion")
_BITCOIN = re.compile(rb"\b(bc1[a-z0-9]{25,60}|[13][a-km-zA-HJ-NP-Z1-9]{25,34})\b")
_MONERO = re.compile(rb"\b4[0-9AB][1-9A-HJ-NP-Za-km-z]{93}\b")
_KEYWORDS = [
    re.compile(rb"decrypt|d\xc3\xa9chiffr|dechiffr", re.I),
    re.compile(rb"encrypted|chiffr\xc3\xa9s?|crypt\xc3\xa9s?", re.I),
    re.compile(rb"bitcoin|\bbtc\b|monero|\bxmr\b|crypto-?currency", re.I),
    re.compile(rb"tor browser|torproject|\.onion", re.I),
    re.compile(rb"private key|decryption key|cl\xc3\xa9 priv\xc3\xa9e|unique key", re.I),
    re.compile(rb"ransom|ran\xc3\xa7on|payment|paiement|pay us|payer", re.I),
    re.compile(rb"your (files|data|network|documents)|vos (fichiers|donn\xc3\xa9es)", re.I),
    re.compile(rb"leak|publish|publi(er|cation)|stolen|exfiltrat|vol\xc3\xa9es", re.I),
    re.compile(rb"do not (rename|modify|try)|ne (renommez|modifiez) pas|deadline|within \d+ (hours|days)", re.I),
]
NOTE_SCORE = 3  # content score from which a text is taken for a ransom note


def note_name(name: str) -> bool:
    """True if a file name looks like a ransom note's."""
    lower = name.lower()
    dot = lower.rfind(".")
    ext = lower[dot:] if dot > 0 else ""
    return ext in NOTE_EXTENSIONS and bool(_NAME.search(lower))


def note_score(text: bytes) -> int:
    """How many distinct ransom-note signals a text holds (0 for an ordinary letter)."""
    sample = text[:16384]
    lower = sample.lower()
    if not (
        b"crypt" in lower or b"chiffr" in lower or b"bitcoin" in lower or b"onion" in lower
        or b"ransom" in lower or b"ran\xc3\xa7on" in lower or b"monero" in lower
    ):
        return 0  # cheap filter: every note names encryption, a payment or a Tor address
    score = sum(1 for pattern in _KEYWORDS if pattern.search(sample))
    if _ONION_V3.search(sample.lower()):
        score += 2
    elif _ONION_ANY.search(sample.lower()):
        score += 1
    if _BITCOIN.search(sample) or _MONERO.search(sample):
        score += 1
    return score

"""Byte statistics without per-byte Python loops: entropy, chi-square, compressibility, text,
and ransom notes (recognisable names and contents, English and French).

``collections.Counter`` over a bytes object, ``bytes.translate`` and ``zlib`` all run in C.
"""

from __future__ import annotations

import binascii
import math
import re
import zlib
from collections import Counter

# Bytes that never appear in ordinary text (NUL and the C0 controls except \t \n \v \f \r, ESC
# and the DOS end-of-file 0x1A, plus DEL).
_CONTROL = bytes([*range(0, 9), 0x0E, 0x0F, *range(0x10, 0x1A), 0x1C, 0x1D, 0x1E, 0x1F, 0x7F])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_\r\n"
_HEX = b"0123456789abcdefABCDEF\r\n"
_RANDOM_ENTROPY = 7.9  # bits per byte; 8 KiB of random data measures about 7.98
_RANDOM_CHI2_MAX = 350.0  # 255 degrees of freedom: p(chi2 > 350) < 1e-4 for random data
_RANDOM_ZRATIO = 0.98


def histogram_stats(data: bytes) -> tuple[float, float]:
    """(Shannon entropy in bits per byte, chi-square against the uniform distribution)."""
    n = len(data)
    if n == 0:
        return 0.0, 0.0
    counts = Counter(data)
    expected = n / 256.0
    entropy = 0.0
    chi2 = 0.0
    for c in counts.values():
        p = c / n
        entropy -= p * math.log2(p)
        chi2 += (c - expected) ** 2 / expected
    chi2 += (256 - len(counts)) * expected  # absent byte values
    return entropy, chi2


def looks_random(entropy: float, chi2: float, n: int) -> bool:
    """Uniformly random by both tests (compressed data usually fails chi-square)."""
    if n < 1024:
        return entropy >= 7.0 and chi2 < 400.0
    # the plug-in entropy of n random bytes falls short of 8 by about 255 / (2 n ln 2)
    expected = 8.0 - 255.0 / (2.0 * n * math.log(2))
    return entropy >= min(_RANDOM_ENTROPY, expected - 0.06) and chi2 < _RANDOM_CHI2_MAX


def zratio(data: bytes) -> float:
    """Compressed size / size with zlib level 1: about 1.0 for random bytes."""
    if not data:
        return 0.0
    return len(zlib.compress(data, 1)) / len(data)


def control_count(data: bytes) -> int:
    """Number of bytes that cannot occur in text."""
    return len(data.translate(None, _NOT_CONTROL))


def utf8_ok(data: bytes) -> bool:
    """True if ``data`` is valid UTF-8, tolerating a sequence cut at either end of the sample."""
    start = 0
    while start < 3 and start < len(data) and 0x80 <= data[start] < 0xC0:
        start += 1
    try:
        data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.start >= len(data) - start - 4
    return True


def is_text(data: bytes) -> bool:
    """Looks like text (any 8-bit encoding): almost no control bytes."""
    if not data:
        return False
    bad = control_count(data)
    return bad <= max(2, len(data) // 2000)


def is_utf16_text(data: bytes) -> bool:
    """UTF-16 text with a byte-order mark (Windows "Unicode text" exports): mostly-zero high bytes."""
    if data[:2] == b"\xff\xfe":
        lo, hi = data[2::2], data[3::2]
    elif data[:2] == b"\xfe\xff":
        lo, hi = data[3::2], data[2::2]
    else:
        return False
    return len(hi) >= 16 and hi.count(0) * 2 >= len(hi) and is_text(lo.replace(b"\x00", b""))


def encoded_kind(data: bytes) -> str | None:
    """"b64" or "hex" when ``data`` is base64/hex text whose decoded bytes look random."""
    if len(data) < 256:
        return None
    probe = data[:6144]
    if b" " in probe:
        return None  # prose has spaces; base64 and hex never do
    if not probe.translate(None, _HEX):
        digits = re.sub(rb"[\r\n]", b"", probe)
        digits = digits[: len(digits) // 2 * 2]
        try:
            raw = binascii.unhexlify(digits)
        except (binascii.Error, ValueError):
            return None
        return "hex" if zratio(raw) >= _RANDOM_ZRATIO else None
    if not probe.translate(None, _B64):
        text = re.sub(rb"[\r\n=]", b"", probe).replace(b"-", b"+").replace(b"_", b"/")
        text = text[: len(text) // 4 * 4]
        if len(set(text[:1024])) < 48:  # real base64 of random bytes uses the whole alphabet
            return None
        try:
            raw = binascii.a2b_base64(text)
        except (binascii.Error, ValueError):
            return None
        return "b64" if len(raw) >= 128 and zratio(raw) >= _RANDOM_ZRATIO else None
    return None


def all_zero(data: bytes) -> bool:
    return not data.strip(b"\x00")


def single_byte(data: bytes) -> bool:
    """Every byte equal (zeros, 0xFF fill ...)."""
    return bool(data) and not data.strip(data[:1])


# ------------------------------------------------------------------ ransom notes
NOTE_EXTENSIONS = frozenset({"", ".txt", ".html", ".htm", ".hta", ".rtf", ".url", ".png", ".bmp", ".jpg"})
_NAME = re.compile(
    r"(decrypt|d[eé]chiffr|recover|restore|ransom|ran[cç]on|unlock|"
    r"how[\W_]*to[\W_]*(back|get|decrypt|restore|recover|open)|"
    r"read[\W_]*me[\W_]*(now|first|for|to|!)|!!!|^_readme|^\+readme|"
    r"files[\W_]*(are[\W_]*)?encrypted|your[\W_]*files|fichiers[\W_]*chiffr|attention[\W_]*!)",
)  # searched in the lower-cased name: no IGNORECASE (case folding made each search ~3x slower)
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

"""The recovery kit: the recovery private key and id key, encrypted under a passphrase.

File form (JSON)::

    {"kind": "rempart-recovery-kit", "version": 1, "repository": "<repo id>",
     "kdf": {"name": "argon2id", "iterations": 3, "memory_kib": 65536, "lanes": 4, "salt": b64},
     "sealed": b64(nonce || AES-256-GCM(kdf_key, secrets_json, aad=header))}

The printable form wraps the same JSON in base32 lines (and a QR code) so that an IT provider
can keep it on paper, offline; each line carries its number and a check group, so a kit retyped
from paper points at the line with the typo.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from rempart.core.errors import DecryptionError, IntegrityError, UserError, WrongPassphrase
from rempart.crypto.aead import DataKey
from rempart.crypto.keys import IdKey, RecoveryPrivateKey

KIND = "rempart-recovery-kit"
DEFAULT_KDF = {"name": "argon2id", "iterations": 3, "memory_kib": 65536, "lanes": 4}
#: cheap parameters for tests only (never the default)
TEST_KDF = {"name": "argon2id", "iterations": 1, "memory_kib": 8, "lanes": 1}
MIN_PASSPHRASE = 8


@dataclass(frozen=True)
class RecoveryKit:
    repository: str
    private_key: RecoveryPrivateKey
    id_key: IdKey

    def __repr__(self) -> str:
        return f"RecoveryKit(repository={self.repository!r}, <secret>)"


def _derive(passphrase: str, kdf: dict[str, object], salt: bytes) -> DataKey:
    if kdf.get("name") != "argon2id":
        raise IntegrityError("recovery kit uses an unknown key derivation")
    it, mem, lanes = int(kdf["iterations"]), int(kdf["memory_kib"]), int(kdf["lanes"])  # type: ignore[call-overload]
    if not (1 <= it <= 100 and 8 <= mem <= 4 * 1024 * 1024 and 1 <= lanes <= 64):
        raise IntegrityError("recovery kit has out-of-range key derivation parameters")
    raw = Argon2id(salt=salt, length=32, iterations=it, lanes=lanes, memory_cost=mem).derive(
        passphrase.encode("utf-8")
    )
    return DataKey(raw)


def encrypt_kit(kit: RecoveryKit, passphrase: str, kdf: dict[str, object] | None = None) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise UserError(f"the kit passphrase must have at least {MIN_PASSPHRASE} characters")
    params: dict[str, object] = dict(kdf or DEFAULT_KDF)
    salt = os.urandom(16)
    params["salt"] = base64.b64encode(salt).decode()
    header = {"kind": KIND, "version": 1, "repository": kit.repository, "kdf": params}
    aad = json.dumps(header, sort_keys=True).encode()
    secrets_json = json.dumps(
        {
            "private_key": base64.b64encode(kit.private_key.raw).decode(),
            "id_key": base64.b64encode(kit.id_key.raw).decode(),
        }
    ).encode()
    sealed = _derive(passphrase, params, salt).seal(secrets_json, aad)
    doc = dict(header, sealed=base64.b64encode(sealed).decode())
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def decrypt_kit(data: bytes, passphrase: str) -> RecoveryKit:
    try:
        doc = json.loads(_unwrap_printable(data))
        if doc.get("kind") != KIND or doc.get("version") != 1:
            raise ValueError
        header = {k: doc[k] for k in ("kind", "version", "repository", "kdf")}
        salt = base64.b64decode(doc["kdf"]["salt"])
        sealed = base64.b64decode(doc["sealed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError("this file is not a Rempart recovery kit, or it is damaged") from exc
    aad = json.dumps(header, sort_keys=True).encode()
    try:
        plain = _derive(passphrase, header["kdf"], salt).open(sealed, aad)
    except DecryptionError:
        raise WrongPassphrase(
            "the recovery kit passphrase is wrong (or the kit was altered)",
            hint="check the passphrase written down with the kit",
        ) from None
    secrets_doc = json.loads(plain)
    return RecoveryKit(
        repository=str(header["repository"]),
        private_key=RecoveryPrivateKey(base64.b64decode(secrets_doc["private_key"])),
        id_key=IdKey(base64.b64decode(secrets_doc["id_key"])),
    )


BEGIN = "-----BEGIN REMPART RECOVERY KIT-----"
END = "-----END REMPART RECOVERY KIT-----"


def to_printable(kit_file: bytes) -> str:
    """Base32 text for paper storage: numbered lines of six 8-character groups, each ending
    with a check group (``| XXXX``), so that a typo made retyping the kit is found on its line
    (and a missing line by its number, the last one by its own check)."""
    b32 = base64.b32encode(kit_file).decode().rstrip("=")
    groups = [b32[i : i + 8] for i in range(0, len(b32), 8)]
    rows = [" ".join(groups[i : i + 6]) for i in range(0, len(groups), 6)]
    lines = [f"{n:02d} {row} | {_check(n, row, n == len(rows))}" for n, row in enumerate(rows, 1)]
    return "\n".join([BEGIN, *lines, END]) + "\n"


#: base32 has no 0, 1 or 8: read as the letters they are mistaken for
_LOOKALIKES = str.maketrans("018", "OIB")


def _check(n: int, row: str, last: bool) -> str:
    data = "".join(row.split()).upper().translate(_LOOKALIKES)
    digest = hashlib.sha256(f"{n}:{data}:{'last' if last else ''}".encode()).digest()
    return base64.b32encode(digest).decode()[:4]


def _unwrap_printable(data: bytes) -> bytes:
    text = data.decode("utf-8", errors="replace")
    if BEGIN not in text:
        return data
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [line for line in body.splitlines() if line.strip()]
    if any("|" in line for line in lines):
        b32 = "".join(_checked(line, n, n == len(lines)) for n, line in enumerate(lines, 1))
    else:  # the first printable form, without line numbers and check groups
        b32 = "".join(body.split()).upper()
    b32 += "=" * (-len(b32) % 8)
    return base64.b32decode(b32.translate(_LOOKALIKES))


def _checked(line: str, expected: int, last: bool) -> str:
    """The base32 of one numbered line, after its number and check group are verified."""
    head, _, check = line.rpartition("|")
    number, _, row = head.strip().partition(" ")
    if not number.isdigit() or int(number) != expected:
        raise IntegrityError(f"the printable recovery kit: line {expected} is missing or out of order",
                             hint="compare the line numbers with the paper copy")
    check = check.strip().upper().translate(_LOOKALIKES)
    if check != _check(expected, row, last):
        if last and check == _check(expected, row, False):
            raise IntegrityError(f"the printable recovery kit: the lines after line {expected} are missing")
        raise IntegrityError(f"the printable recovery kit: line {expected} has a typo (its check group does not match)",
                             hint=f"compare line {expected} with the paper copy, character by character")
    return "".join(row.split()).upper()

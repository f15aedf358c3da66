"""Tokens and enrollment codes: random, shown once, stored as SHA-256, compared in constant time.

A token reads ``rvt_<id>_<secret>``: the id (12 hex digits) finds the row, the SHA-256 of the
whole token is compared with :func:`hmac.compare_digest`. Tokens have 256 bits of entropy, so
an unsalted SHA-256 is enough (no password-hashing function is needed). Enrollment codes read
``<id>-<secret>`` and are single use and short-lived.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import AuthenticationError, UserError
from rempart.vault import db

SCOPES = ("backup", "restore", "admin")
TOKEN_PREFIX = "rvt_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: never holds the token itself."""

    token_id: str
    scope: str
    practice_id: int | None  # None for provider-level admin tokens
    practice: str | None

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    tid = secrets.token_hex(6)
    return tid, f"{TOKEN_PREFIX}{tid}_{secrets.token_urlsafe(32)}"


def create_token(conn: Connection, *, scope: str, practice_id: int | None, now: float, label: str = "") -> str:
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    if scope != "admin" and practice_id is None:
        raise UserError("backup and restore tokens belong to a practice")
    tid, token = new_token()
    conn.execute(
        db.tokens.insert().values(
            id=tid, practice_id=practice_id, scope=scope, hash=digest(token), created=now, revoked=False,
            label=label[:100],
        )
    )
    return token


def token_id_of(token: str) -> str | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    parts = token[len(TOKEN_PREFIX):].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != 12:
        return None
    return parts[0]


def authenticate(conn: Connection, token: str) -> Principal:
    tid = token_id_of(token)
    dummy = "0" * 64
    row = None
    if tid is not None:
        row = conn.execute(
            sa.select(db.tokens, db.practices.c.name)
            .select_from(db.tokens.outerjoin(db.practices, db.tokens.c.practice_id == db.practices.c.id))
            .where(db.tokens.c.id == tid)
        ).first()
    ok = hmac.compare_digest(digest(token), row.hash if row is not None else dummy)
    if row is None or not ok or row.revoked:
        raise AuthenticationError("the vault token is wrong or revoked")
    return Principal(token_id=row.id, scope=row.scope, practice_id=row.practice_id, practice=row.name)


def authenticate_with_practice(conn: Connection, token: str) -> tuple[Principal, Any, str]:
    """Like :func:`authenticate`, in ONE query that also returns the token's practice row (None
    for provider admin tokens) and the token's stored hash (for the in-memory cache)."""
    tid = token_id_of(token)
    row = None
    if tid is not None:
        t = db.tokens
        row = conn.execute(
            sa.select(t.c.id.label("t_id"), t.c.scope.label("t_scope"), t.c.practice_id.label("t_pid"),
                      t.c.hash.label("t_hash"), t.c.revoked.label("t_revoked"), *db.practices.c)
            .select_from(t.outerjoin(db.practices, t.c.practice_id == db.practices.c.id))
            .where(t.c.id == tid)
        ).first()
    hashed = digest(token)
    ok = hmac.compare_digest(hashed, row.t_hash if row is not None else "0" * 64)
    if row is None or not ok or row.t_revoked:
        raise AuthenticationError("the vault token is wrong or revoked")
    p = Principal(token_id=row.t_id, scope=row.t_scope, practice_id=row.t_pid,
                  practice=row.name if row.t_pid is not None else None)
    return p, (row if row.t_pid is not None else None), hashed


def revoke(conn: Connection, token_id: str) -> bool:
    res = conn.execute(db.tokens.update().where(db.tokens.c.id == token_id).values(revoked=True))
    return bool(res.rowcount)


# --- enrollment codes ----------------------------------------------------------------------

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


class EnrollError(AuthenticationError):
    """The enrollment code is wrong, expired or already used."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def create_enroll_code(conn: Connection, practice_id: int, *, now: float, ttl: float) -> str:
    cid = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(20))
    code = f"{cid}-{secret}"
    conn.execute(
        db.enroll_codes.insert().values(
            id=cid, practice_id=practice_id, hash=digest(code), created=now, expires=now + ttl, used_at=None
        )
    )
    return code


def redeem_enroll_code(conn: Connection, code: str, *, now: float) -> int:
    """Mark the code used and return its practice id, or raise EnrollError."""
    code = code.strip().upper()
    cid = code.split("-", 1)[0] if "-" in code else ""
    row = conn.execute(sa.select(db.enroll_codes).where(db.enroll_codes.c.id == cid)).first() if cid else None
    ok = hmac.compare_digest(digest(code), row.hash if row is not None else "0" * 64)
    if row is None or not ok:
        raise EnrollError("the enrollment code is wrong", reason="wrong")
    if row.used_at is not None:
        raise EnrollError("the enrollment code was already used; ask for a new one", reason="used")
    if now > row.expires:
        raise EnrollError("the enrollment code has expired; ask for a new one", reason="expired")
    res = conn.execute(
        db.enroll_codes.update()
        .where(db.enroll_codes.c.id == cid, db.enroll_codes.c.used_at.is_(None))
        .values(used_at=now)
    )
    if res.rowcount != 1:  # pragma: no cover - raced with another redeemer
        raise EnrollError("the enrollment code was already used; ask for a new one", reason="used")
    return int(row.practice_id)

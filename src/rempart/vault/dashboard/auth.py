"""Dashboard users, passwords, sessions and CSRF tokens.

* Passwords are hashed with scrypt (memory-hard, ``cryptography``'s implementation): N=2^15,
  r=8, p=1, 16-byte random salt, 32-byte output, stored as ``scrypt$15$8$1$<salt>$<hash>``.
  Verification recomputes and compares with :func:`hmac.compare_digest`; an unknown user name
  costs the same scrypt computation, so timing does not reveal which names exist.
* A session id is 32 random bytes (URL-safe); the database keeps only its SHA-256, so a leaked
  database does not hand out live sessions. Each session has its own CSRF token (synchroniser
  token pattern); every POST must carry it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.engine import Connection

from rempart.core.errors import AuthenticationError, UserError
from rempart.vault.watch import tables as t

ROLES = ("admin", "provider")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
_N_LOG2, _R, _P = 15, 8, 1


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _scrypt(password: str, salt: bytes, n_log2: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**n_log2, r=r, p=p).derive(password.encode())


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a dashboard password needs at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    return f"scrypt${_N_LOG2}${_R}${_P}${_b64(salt)}${_b64(_scrypt(password, salt, _N_LOG2, _R, _P))}"


_DUMMY = f"scrypt${_N_LOG2}${_R}${_P}${_b64(b'0' * 16)}${_b64(b'0' * 32)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt" or not (10 <= int(n) <= 20):
            return False
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(got, _unb64(want))
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class User:
    username: str
    role: str
    provider: str | None
    lang: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


def add_user(conn: Connection, username: str, password: str, role: str, provider: str | None, lang: str,
             now: float) -> User:
    if not USERNAME.match(username):
        raise UserError("a user name is 1-64 letters, digits, dots, dashes, underscores or @")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if role == "provider" and not provider:
        raise UserError("an IT provider user needs --provider (the organisation whose practices it sees)")
    if lang not in ("fr", "en"):
        raise UserError("language must be fr or en")
    if conn.execute(sa.select(t.users.c.username).where(t.users.c.username == username)).first():
        raise UserError(f"user {username!r} exists already")
    conn.execute(t.users.insert().values(username=username, pw_hash=hash_password(password), role=role,
                                         provider=provider if role == "provider" else None, lang=lang,
                                         created=now, disabled=False))
    return User(username, role, provider if role == "provider" else None, lang)


def set_password(conn: Connection, username: str, password: str) -> None:
    res = conn.execute(t.users.update().where(t.users.c.username == username)
                       .values(pw_hash=hash_password(password)))
    if not res.rowcount:
        raise UserError(f"no user {username[:64]!r}")
    conn.execute(t.sessions.delete().where(t.sessions.c.username == username))


def disable_user(conn: Connection, username: str) -> None:
    res = conn.execute(t.users.update().where(t.users.c.username == username).values(disabled=True))
    if not res.rowcount:
        raise UserError(f"no user {username[:64]!r}")
    conn.execute(t.sessions.delete().where(t.sessions.c.username == username))


def list_users(conn: Connection) -> list[tuple[User, bool]]:
    rows = conn.execute(sa.select(t.users).order_by(t.users.c.username)).all()
    return [(User(r.username, r.role, r.provider, r.lang), bool(r.disabled)) for r in rows]


def check_login(conn: Connection, username: str, password: str) -> User:
    row = conn.execute(sa.select(t.users).where(t.users.c.username == username[:64])).first()
    ok = verify_password(password, row.pw_hash if row is not None else _DUMMY)
    if row is None or not ok or row.disabled:
        raise AuthenticationError("wrong user name or password")
    return User(row.username, row.role, row.provider, row.lang)


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    sid_hash: str


def new_session(conn: Connection, user: User, now: float, ttl: float) -> tuple[str, str]:
    """Create a session; returns (cookie value, csrf token)."""
    sid = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    conn.execute(t.sessions.delete().where(t.sessions.c.expires < now))
    conn.execute(t.sessions.insert().values(id_hash=_sid_hash(sid), username=user.username, csrf=csrf,
                                            created=now, expires=now + ttl))
    return sid, csrf


def load_session(conn: Connection, sid: str, now: float) -> Session | None:
    if not sid or len(sid) > 100:
        return None
    row = conn.execute(
        sa.select(t.sessions, t.users.c.role, t.users.c.provider, t.users.c.lang, t.users.c.disabled)
        .select_from(t.sessions.join(t.users, t.users.c.username == t.sessions.c.username))
        .where(t.sessions.c.id_hash == _sid_hash(sid))).first()
    if row is None or row.expires < now or row.disabled:
        return None
    return Session(User(row.username, row.role, row.provider, row.lang), row.csrf, row.id_hash)


def end_session(conn: Connection, sid: str) -> None:
    conn.execute(t.sessions.delete().where(t.sessions.c.id_hash == _sid_hash(sid)))


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())

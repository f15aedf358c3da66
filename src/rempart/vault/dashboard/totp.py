"""A second factor for dashboard logins: time-based one-time codes (TOTP, RFC 6238).

The dashboard can release an incident freeze; a phished password alone must not be enough.
``rempart vault user totp NAME`` gives a user a secret (20 random bytes), shown once as an
``otpauth://`` address that any authenticator app reads (6 digits, 30-second steps, HMAC-SHA1:
what the apps expect), and from then on that user's logins need a current code as well as the
password. ``[dashboard] require_totp = true`` refuses every login of a user without one.

* Codes are computed by ``cryptography``'s TOTP, compared in constant time, on the vault's
  clock, one step either side accepted for clock drift.
* A code is single-use: the step it belongs to is recorded, and a code of that step or an
  earlier one is refused, so a code read over a shoulder or out of a proxy log cannot be
  replayed, even within its 30 seconds.
* The secret is kept in the vault's database (``watch_users.totp_secret``), like the password
  hash: whoever reads the database can compute codes, but still needs the password.
"""

from __future__ import annotations

import base64
import hmac
import secrets

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy.engine import Connection

from rempart.core.errors import AuthenticationError, UserError
from rempart.vault.watch import tables as t

STEP = 30
DIGITS = 6
ISSUER = "Rempart vault"


def _totp(secret_b32: str) -> TOTP:
    # HMAC-SHA1 is RFC 6238's default and the only algorithm every authenticator app honours;
    # an HMAC does not rely on the collision resistance SHA-1 lost
    return TOTP(base64.b32decode(secret_b32), DIGITS, hashes.SHA1(), STEP)  # noqa: S303


def enable(conn: Connection, username: str) -> str:
    """Give ``username`` a new secret; returns its ``otpauth://`` address (show it once)."""
    secret = base64.b32encode(secrets.token_bytes(20)).decode()
    res = conn.execute(t.users.update().where(t.users.c.username == username)
                       .values(totp_secret=secret, totp_last_step=None))
    if not res.rowcount:
        raise UserError(f"no user {username[:64]!r}")
    return _totp(secret).get_provisioning_uri(username, ISSUER)


def disable(conn: Connection, username: str) -> None:
    res = conn.execute(t.users.update().where(t.users.c.username == username)
                       .values(totp_secret=None, totp_last_step=None))
    if not res.rowcount:
        raise UserError(f"no user {username[:64]!r}")


def code_at(secret_b32: str, when: float) -> str:
    """The code of the step holding ``when`` (tests, and the CLI's check after enabling)."""
    return _totp(secret_b32).generate(when).decode()


def check(conn: Connection, username: str, code: str, now: float, *, required: bool) -> None:
    """Accept ``code`` for ``username`` once, or raise AuthenticationError. A user without a
    secret passes unless ``required``."""
    row = conn.execute(sa.select(t.users.c.totp_secret, t.users.c.totp_last_step)
                       .where(t.users.c.username == username)).first()
    if row is None or row.totp_secret is None:
        if required:
            raise AuthenticationError("this vault requires a one-time code and the user has none")
        return
    code = code.strip().replace(" ", "")
    if not (len(code) == DIGITS and code.isdigit()):
        raise AuthenticationError("a one-time code is needed")
    current = int(now // STEP)
    matched = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(code_at(row.totp_secret, step * STEP), code):
            matched = step
    if matched is None:
        raise AuthenticationError("wrong one-time code")
    if row.totp_last_step is not None and matched <= row.totp_last_step:
        raise AuthenticationError("one-time code already used")
    conn.execute(t.users.update().where(t.users.c.username == username).values(totp_last_step=matched))

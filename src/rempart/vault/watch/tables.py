"""The watch's own tables (alerts, outbox, users, sessions, settings), with their own migration
list and version table so that the vault's schema in :mod:`rempart.vault.db` stays untouched.
Practice ids refer to ``practices.id`` of the vault's schema (no foreign key across the two
metadata objects; practices are never deleted)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

version = sa.Table("watch_schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

settings = sa.Table(
    "watch_settings", metadata,
    sa.Column("practice_id", sa.Integer, primary_key=True),
    sa.Column("provider", sa.String(64), nullable=True),       # IT provider organisation
    sa.Column("contacts", sa.Text, nullable=True),             # JSON list of e-mail addresses
    sa.Column("lang", sa.String(2), nullable=False, default="fr"),
    sa.Column("expectation", sa.Text, nullable=True),          # JSON overrides of the defaults
    sa.Column("reports", sa.Boolean, nullable=False, default=True),
)

providers = sa.Table(
    "watch_providers", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("contacts", sa.Text, nullable=True),             # JSON list of e-mail addresses
    sa.Column("lang", sa.String(2), nullable=False, default="fr"),
)

alerts = sa.Table(
    "watch_alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("practice_id", sa.Integer, nullable=False, index=True),
    sa.Column("grp", sa.String(16), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("opened", sa.Float, nullable=False),
    sa.Column("escalated", sa.Float, nullable=True),
    sa.Column("resolved", sa.Float, nullable=True),
    sa.Column("notified", sa.Float, nullable=True),             # last notification (added by migration 2)
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("is_open", sa.Boolean, nullable=False, default=True),
    sa.Index("ix_watch_alerts_open", "practice_id", "is_open"),
)

outbox = sa.Table(
    "watch_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, nullable=True),
    sa.Column("practice_id", sa.Integer, nullable=True),
    sa.Column("event", sa.String(16), nullable=False),          # opened|worsened|escalated|resolved|report
    sa.Column("channel", sa.String(16), nullable=False),        # email | webhook
    sa.Column("target", sa.Text, nullable=False),               # JSON list of addresses, or webhook url
    sa.Column("payload", sa.Text, nullable=False),              # JSON
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("next_try", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("sent", sa.Float, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    sa.Index("ix_watch_outbox_pending", "sent", "next_try"),
)

users = sa.Table(
    "watch_users", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("pw_hash", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),           # admin | provider
    sa.Column("provider", sa.String(64), nullable=True),
    sa.Column("lang", sa.String(2), nullable=False, default="fr"),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    # second factor (rempart.vault.dashboard.totp, migration 4): base32 secret, last step used
    sa.Column("totp_secret", sa.String(64), nullable=True),
    sa.Column("totp_last_step", sa.BigInteger, nullable=True),
)

sessions = sa.Table(
    "watch_sessions", metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),      # SHA-256 of the cookie value
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)

reports = sa.Table(
    "watch_reports", metadata,
    sa.Column("practice_id", sa.Integer, primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),       # ISO week, e.g. 2026-W05
    sa.Column("queued", sa.Float, nullable=False),
)

drills = sa.Table(
    "watch_drills", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("practice_id", sa.Integer, nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),        # ok | failed
    sa.Column("note", sa.String(200), nullable=True),
    # measured by `rempart drill` (empty for a drill recorded by hand)
    sa.Column("snapshot", sa.String(64), nullable=True),
    sa.Column("files", sa.BigInteger, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=True),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("error_class", sa.String(64), nullable=True),
)


def _m1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[settings, providers, alerts, outbox, users, sessions, reports, drills])


def _m2(conn: Connection) -> None:
    """Reminders: remember when each alert was last notified."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("watch_alerts")}
    if "notified" not in cols:
        conn.execute(sa.text("ALTER TABLE watch_alerts ADD COLUMN notified FLOAT"))


def _m3(conn: Connection) -> None:
    """Drills measured by `rempart drill`: which snapshot, how much, how long, why it failed."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("watch_drills")}
    for name, kind in (("snapshot", "VARCHAR(64)"), ("files", "BIGINT"), ("bytes", "BIGINT"), ("seconds", "FLOAT"),
                       ("error_class", "VARCHAR(64)")):
        if name not in cols:
            conn.execute(sa.text(f"ALTER TABLE watch_drills ADD COLUMN {name} {kind}"))


def _m4(conn: Connection) -> None:
    """A second factor for dashboard users."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("watch_users")}
    for name, kind in (("totp_secret", "VARCHAR(64)"), ("totp_last_step", "BIGINT")):
        if name not in cols:
            conn.execute(sa.text(f"ALTER TABLE watch_users ADD COLUMN {name} {kind}"))


MIGRATIONS: list[Callable[[Connection], None]] = [_m1, _m2, _m3, _m4]


def migrate(engine: Engine) -> int:
    """Create or update the watch tables; returns the watch schema version. Idempotent."""
    with engine.begin() as conn:
        version.create(conn, checkfirst=True)
        row = conn.execute(sa.select(version.c.version)).first()
        current = row[0] if row else 0
        for i in range(current, len(MIGRATIONS)):
            MIGRATIONS[i](conn)
        if row is None:
            conn.execute(version.insert().values(version=len(MIGRATIONS)))
        elif current < len(MIGRATIONS):
            conn.execute(version.update().values(version=len(MIGRATIONS)))
    return len(MIGRATIONS)

"""The vault's metadata database: SQLAlchemy Core tables, engine set-up and migrations.

SQLite (default) and PostgreSQL run the same code. Every write transaction that must see a
consistent practice (snapshot commit, exists/touch, GC marking) starts with
:func:`lock_practice`, which is ``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions are
opened with ``BEGIN IMMEDIATE`` (:func:`write`) so they are serialised by the database lock;
read-only connections use a deferred ``BEGIN`` and never wait for writers (WAL).

Migrations are a list of functions; ``schema_version`` records how many ran. To add a table,
define it below and append a migration that creates it (``metadata.create_all(conn,
tables=[...])``); never edit an old migration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from rempart.core.errors import ConfigError

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

practices = sa.Table(
    "practices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("quota_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("used_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("frozen", sa.Boolean, nullable=False, default=False),
    sa.Column("frozen_reason", sa.String(200), nullable=True),
    sa.Column("frozen_at", sa.Float, nullable=True),
    sa.Column("policy", sa.Text, nullable=True),
    sa.Column("last_snapshot_at", sa.Float, nullable=True),
    # end of contract (rempart.vault.closing, migration 6): when closed, why, when fully erased
    sa.Column("closed_at", sa.Float, nullable=True),
    sa.Column("closed_reason", sa.String(200), nullable=True),
    sa.Column("erased_at", sa.Float, nullable=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("practice_id", sa.Integer, sa.ForeignKey("practices.id"), nullable=True),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("label", sa.String(100), nullable=True),
)

enroll_codes = sa.Table(
    "enroll_codes",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("practice_id", sa.Integer, sa.ForeignKey("practices.id"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("practice_id", sa.Integer, sa.ForeignKey("practices.id"), primary_key=True),
    sa.Column("type", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    # live | deleting | deleted | superseded (index files replaced by a consolidated one)
    sa.Column("state", sa.String(16), nullable=False, default="live"),
    # the scrub (rempart.vault.scrub, migration 3): when its bytes were last re-hashed, and what
    # was wrong then (None: they matched their name)
    sa.Column("verified", sa.Float, nullable=True),
    sa.Column("damage", sa.String(32), nullable=True),
    # S3 Object Lock (rempart.vault.lockrenew, migration 4): the retain-until date last read
    # from or set on the storage; None until the renewal pass has looked at the object
    sa.Column("locked_until", sa.Float, nullable=True),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("practice_id", sa.Integer, nullable=False),
    sa.Column("blob_id", sa.LargeBinary(32), nullable=False),
    sa.Column("pack", sa.String(64), nullable=False),
    sa.Column("btype", sa.SmallInteger, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("touched", sa.Float, nullable=True),
    sa.Index("ix_blobs_id", "practice_id", "blob_id"),
    sa.Index("ix_blobs_pack", "practice_id", "pack"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("practice_id", sa.Integer, sa.ForeignKey("practices.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("client_time", sa.String(64), nullable=True),
    sa.Column("verdict", sa.String(16), nullable=False, default="clean"),
    sa.Column("detection", sa.Text, nullable=True),
    sa.Column("stats", sa.Text, nullable=True),
    sa.Column("false_positive", sa.Boolean, nullable=False, default=False),
    sa.Column("state", sa.String(16), nullable=False, default="kept"),  # kept | forgotten
    # legal hold (migration 5): the admin's reason; while set, retention never forgets it
    sa.Column("hold", sa.String(200), nullable=True),
    sa.Column("held_at", sa.Float, nullable=True),
)

snapshot_refs = sa.Table(
    "snapshot_refs",
    metadata,
    sa.Column("practice_id", sa.Integer, nullable=False),
    sa.Column("snapshot", sa.String(64), nullable=False),
    sa.Column("blob_id", sa.LargeBinary(32), nullable=False),
    sa.Index("ix_refs_snap", "practice_id", "snapshot"),
    sa.Index("ix_refs_blob", "practice_id", "blob_id"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("practice_id", sa.Integer, nullable=False, index=True),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error_class", sa.String(64), nullable=True),
    sa.Column("counts", sa.Text, nullable=True),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("practice", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


approvals = sa.Table(
    "approvals",
    metadata,
    # two-person rule (rempart.vault.approvals, migration 7)
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("requested_by", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("practice", sa.String(64), nullable=False),
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | approved | rejected | failed
    sa.Column("decided_by", sa.String(64), nullable=True),
    sa.Column("decided_at", sa.Float, nullable=True),
)


def _m1(conn: Connection) -> None:
    metadata.create_all(
        conn,
        tables=[practices, tokens, enroll_codes, objects, blobs, snapshots, snapshot_refs, runs, audit],
    )


#: the incident state in practice status looks up the last release of a practice (migration 2)
ix_audit_practice_action = sa.Index("ix_audit_practice_action", audit.c.practice, audit.c.action)


def _m2(conn: Connection) -> None:
    ix_audit_practice_action.create(conn, checkfirst=True)


#: the watch counts each practice's damaged objects on every evaluation: only those rows indexed
ix_objects_damaged = sa.Index("ix_objects_damaged", objects.c.practice_id,
                              sqlite_where=objects.c.damage.is_not(None),
                              postgresql_where=objects.c.damage.is_not(None))


def _m3(conn: Connection) -> None:
    """The scrub's columns on ``objects``."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("objects")}
    for name, kind in (("verified", "FLOAT"), ("damage", "VARCHAR(32)")):
        if name not in cols:
            conn.execute(sa.text(f"ALTER TABLE objects ADD COLUMN {name} {kind}"))
    ix_objects_damaged.create(conn, checkfirst=True)


def _m4(conn: Connection) -> None:
    """The lock renewal's column on ``objects``."""
    if "locked_until" not in {c["name"] for c in sa.inspect(conn).get_columns("objects")}:
        conn.execute(sa.text("ALTER TABLE objects ADD COLUMN locked_until FLOAT"))


def _m5(conn: Connection) -> None:
    """Legal holds on ``snapshots``."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("snapshots")}
    for name, kind in (("hold", "VARCHAR(200)"), ("held_at", "FLOAT")):
        if name not in cols:
            conn.execute(sa.text(f"ALTER TABLE snapshots ADD COLUMN {name} {kind}"))


def _m6(conn: Connection) -> None:
    """Closing a practice at the end of its contract."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("practices")}
    for name, kind in (("closed_at", "FLOAT"), ("closed_reason", "VARCHAR(200)"), ("erased_at", "FLOAT")):
        if name not in cols:
            conn.execute(sa.text(f"ALTER TABLE practices ADD COLUMN {name} {kind}"))


def _m7(conn: Connection) -> None:
    """The two-person rule's pending requests."""
    metadata.create_all(conn, tables=[approvals], checkfirst=True)


#: append-only list of migrations; index + 1 is the schema version after it ran
MIGRATIONS: list[Callable[[Connection], None]] = [_m1, _m2, _m3, _m4, _m5, _m6, _m7]


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # writers take the database lock up front (no upgrade deadlocks); readers do not
            write = conn.get_execution_options().get("rempart_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ConfigError("database url must start with sqlite:// or postgresql+psycopg://")


def migrate(engine: Engine) -> int:
    """Bring the schema up to date; returns the version."""
    with engine.begin() as conn:
        schema_version.create(conn, checkfirst=True)
        row = conn.execute(sa.select(schema_version.c.version)).first()
        current = row[0] if row else 0
        for i in range(current, len(MIGRATIONS)):
            MIGRATIONS[i](conn)
        if row is None:
            conn.execute(schema_version.insert().values(version=len(MIGRATIONS)))
        elif current < len(MIGRATIONS):
            conn.execute(schema_version.update().values(version=len(MIGRATIONS)))
    return len(MIGRATIONS)


def write(engine: Engine) -> Any:
    """A write transaction: ``with db.write(engine) as conn:`` (BEGIN IMMEDIATE on SQLite)."""
    return engine.execution_options(rempart_write=True).begin()


def lock_practice(conn: Connection, practice_id: int) -> None:
    """Serialise writers of one practice (no-op on SQLite, whose BEGIN IMMEDIATE locks the db)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(practices.c.id).where(practices.c.id == practice_id).with_for_update())

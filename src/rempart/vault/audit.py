"""Append-only, hash-chained audit trail in the ``audit`` table, plus an outside checkpoint.

Each record: seq, server time, actor (token id, never the token), action, practice, outcome,
detail (JSON), prev_hash, hash = SHA-256 of the canonical JSON of all other fields. A
checkpoint file (count and head hash) kept beside the database records the longest chain seen;
``verify`` recomputes the chain and compares it with the checkpoint, so an edited record, a
removed record or a truncated tail is detected.

Limits (honest): someone who can write both the database *and* the checkpoint file can rewrite
the whole history consistently; ship the checkpoint elsewhere (e.g. to the provider's log
server or an S3 object under Object Lock) to close that. Records appended after the last
checkpoint write (a crash in between) can be removed without detection.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rempart.vault import db

GENESIS = "0" * 64


def record_hash(seq: int, time: float, actor: str, action: str, practice: str | None, outcome: str,
                detail: str | None, prev_hash: str) -> str:
    body = json.dumps(
        [seq, repr(float(time)), actor, action, practice, outcome, detail, prev_hash],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(conn: Connection, *, time: float, actor: str, action: str, practice: str | None,
           outcome: str, detail: dict[str, Any] | None = None) -> tuple[int, str]:
    """Append one record inside the caller's transaction; returns (seq, hash)."""
    if conn.dialect.name == "postgresql":  # serialise appenders; SQLite's BEGIN IMMEDIATE does it
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7261)"))
    last = conn.execute(sa.select(db.audit.c.seq, db.audit.c.hash).order_by(db.audit.c.seq.desc()).limit(1)).first()
    seq = (last.seq + 1) if last else 1
    prev = last.hash if last else GENESIS
    d = json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail else None
    h = record_hash(seq, time, actor, action, practice, outcome, d, prev)
    conn.execute(
        db.audit.insert().values(
            seq=seq, time=float(time), actor=actor, action=action, practice=practice, outcome=outcome,
            detail=d, prev_hash=prev, hash=h,
        )
    )
    return seq, h


_CHECKPOINT_LOCK = threading.Lock()


def write_checkpoint(path: Path, seq: int, head: str) -> None:
    """Record (seq, head) if it is newer than what the file holds (atomic replace). Serialised:
    request threads of one vault ingest at once (a shared temporary file vanished under one of
    them, an HTTP 500; and a late older count could replace a newer one)."""
    with _CHECKPOINT_LOCK:
        _write_checkpoint(path, seq, head)


def _write_checkpoint(path: Path, seq: int, head: str) -> None:
    try:
        old = json.loads(path.read_text())
        if int(old.get("count", 0)) >= seq:
            return
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"count": seq, "head": head}))
    os.replace(tmp, path)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    problems: tuple[str, ...]


#: the fields of one record, in the order of the table and of an export line
FIELDS = ("seq", "time", "actor", "action", "practice", "outcome", "detail", "prev_hash", "hash")


def verify(engine: Engine, checkpoint: Path) -> VerifyResult:
    """Check the whole chain in the database against the checkpoint file."""
    with engine.connect() as conn:
        rows = (dict(r._mapping) for r in conn.execute(sa.select(db.audit).order_by(db.audit.c.seq)))
        return verify_records(rows, checkpoint)


def verify_records(records: Iterable[Mapping[str, Any]], checkpoint: Path | None, *,
                   partial: bool = False) -> VerifyResult:
    """Check a chain of records in ``seq`` order (the database's, or an export's). With
    ``partial`` (an export made with ``--after``), a chain may start after record 1 and is
    checked from its first record's ``prev_hash``, which it cannot itself prove; otherwise a
    missing first record is a problem. With ``checkpoint``, its count and head hash must be in
    the chain, as :func:`verify` requires."""
    problems: list[str] = []
    prev: str | None = None
    expected_seq = 1
    hashes: dict[int, str] = {}
    for r in records:
        try:
            seq, time, prev_hash = int(r["seq"]), float(r["time"]), str(r["prev_hash"])
            h = record_hash(seq, time, str(r["actor"]), str(r["action"]), r["practice"], str(r["outcome"]),
                            r["detail"], prev_hash)
        except (KeyError, TypeError, ValueError):
            problems.append(f"record after {expected_seq - 1}: not an audit record")
            continue
        if partial and prev is None and seq > 1:
            expected_seq, prev = seq, prev_hash  # a partial export: its start cannot be proven
        if seq != expected_seq:
            problems.append(f"record {expected_seq} is missing (next is {seq})")
            expected_seq = seq
        if prev_hash != (prev or GENESIS):
            problems.append(f"record {seq}: chain broken (previous hash does not match)")
        if h != r["hash"]:
            problems.append(f"record {seq}: content was modified (hash mismatch)")
        hashes[seq] = str(r["hash"])
        prev = str(r["hash"])
        expected_seq += 1
    count = expected_seq - 1
    if checkpoint is None:
        return VerifyResult(not problems, count, tuple(problems))
    try:
        cp = json.loads(checkpoint.read_text())
        cp_count, cp_head = int(cp["count"]), str(cp["head"])
    except FileNotFoundError:
        if count:
            problems.append(f"checkpoint file {checkpoint} is missing")
        cp_count, cp_head = 0, GENESIS
    except (OSError, ValueError, KeyError, TypeError):
        problems.append(f"checkpoint file {checkpoint} is unreadable")
        cp_count, cp_head = 0, GENESIS
    if cp_count > count:
        problems.append(f"log truncated: checkpoint says {cp_count} records, the log has {count}")
    elif cp_count and hashes.get(cp_count) != cp_head:
        problems.append(f"record {cp_count} does not match the checkpoint head hash")
    return VerifyResult(not problems, count, tuple(problems))

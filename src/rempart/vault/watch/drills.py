"""Restore drills as the vault records them.

A drill proves that a practice's backups can be read back: ``rempart drill`` restores a
snapshot in full on the IT provider's machine (which holds the recovery kit; the vault never
does) and reports the outcome here with a restore token; ``rempart vault watch drill`` records
one done by hand. The latest drill feeds the watch: a failed one opens a "drill" alert at once
(:mod:`rempart.vault.watch.rules`), one older than :data:`DRILL_MAX_AGE_DAYS` days, or none, is
listed as needing attention in the weekly report. Rows hold counts, sizes and a snapshot id,
never a path or a file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import UserError
from rempart.vault.service import Practice, Vault
from rempart.vault.watch import tables as t

#: a drill older than this is listed as "needs attention" in the weekly report
DRILL_MAX_AGE_DAYS = 90
OUTCOMES = ("ok", "failed")


@dataclass(frozen=True)
class DrillRecord:
    """What a drill reports (all but ``outcome`` optional: a drill recorded by hand has none)."""

    outcome: str
    note: str = ""
    snapshot: str | None = None
    files: int | None = None
    bytes: int | None = None
    seconds: float | None = None
    error_class: str | None = None


def record_drill(vault: Vault, practice: Practice, drill: DrillRecord, *, actor: str) -> None:
    """Store one drill (server time) and its audit record."""
    if drill.outcome not in OUTCOMES:
        raise UserError(f"a drill's outcome is one of {', '.join(OUTCOMES)}")
    with vault.engine.begin() as conn:
        conn.execute(t.drills.insert().values(
            practice_id=practice.id, time=vault.now(), outcome=drill.outcome, note=drill.note[:200] or None,
            snapshot=drill.snapshot, files=drill.files, bytes=drill.bytes, seconds=drill.seconds,
            error_class=drill.error_class))
        detail: dict[str, Any] = {"outcome": drill.outcome}
        if drill.snapshot:
            detail["snapshot"] = drill.snapshot
        if drill.error_class:
            detail["error_class"] = drill.error_class
        vault.audit(conn, actor, "watch.drill", practice.name, "ok", detail)
    vault.checkpoint(conn)


def latest_drill(conn: Connection, practice_id: int) -> Any:
    """The practice's most recent drill row, or None."""
    return conn.execute(sa.select(t.drills).where(t.drills.c.practice_id == practice_id)
                        .order_by(t.drills.c.time.desc(), t.drills.c.id.desc()).limit(1)).first()


def drill_json(row: Any) -> dict[str, Any] | None:
    """A drill row as the status routes show it (no note: free text stays in the vault)."""
    if row is None:
        return None
    return {"time": row.time, "outcome": row.outcome, "snapshot": row.snapshot, "files": row.files,
            "bytes": row.bytes, "seconds": row.seconds, "error_class": row.error_class}

"""Keep S3 Object Lock ahead of retention: renew the lock of every object the vault still keeps.

Every object is written with a COMPLIANCE lock of ``[storage] lock_days``. A snapshot kept for
years (``yearly = 3``) and the packs it references outlive that lock; once it lapses, the vault's
own S3 credential (or a thief of it) could delete them. So each GC pass, frozen or not, renews:

* it looks at the practice's *live* objects (packs no kept snapshot references were marked
  ``deleting`` by the same pass and are left to lapse) whose last known retain-until date is
  unknown or less than half a lock period away;
* it reads the date from the storage (an object written before a crash, or re-recorded after a
  re-upload that found it already stored, may carry an older lock than the row suggests) and,
  when less than half a lock period is left, extends it to ``now + lock_days`` on the accepted
  version (:meth:`rempart.storage.s3.S3Backend.extend_retention`, which never shortens);
* it records the date in ``objects.locked_until``, so the next pass skips the object until it is
  due again: each object costs one request per half lock period, not one per pass.

This is why the scheduled GC must run more often than every half lock period (checked by
:func:`rempart.vault.config.parse_config`). Under an incident freeze nothing is deleted and every
live object keeps being renewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from rempart.core.errors import NotFound
from rempart.storage.base import FileType, Handle
from rempart.vault import db
from rempart.vault.service import Practice, Vault

#: rows written back per transaction
BATCH = 200


@dataclass
class RenewReport:
    checked: int = 0
    renewed: int = 0
    missing: int = 0


def renew_locks(vault: Vault, practice: Practice, *, actor: str) -> RenewReport:
    """Extend the Object Lock of ``practice``'s live objects that are due (see the module doc)."""
    report = RenewReport()
    if not vault.store.retention_locked:
        return report
    backend: Any = vault.backend(practice)
    lock = timedelta(days=vault.store.config.lock_days)
    now = vault.clock.now()
    due = (now + lock / 2).timestamp()
    o = db.objects
    with vault.engine.connect() as conn:
        rows = conn.execute(sa.select(o.c.type, o.c.name).where(
            o.c.practice_id == practice.id, o.c.state == "live",
            sa.or_(o.c.locked_until.is_(None), o.c.locked_until < due)).order_by(o.c.type, o.c.name)).all()
    until = now + lock
    done: list[tuple[str, str, float]] = []
    for t, name in rows:
        h = Handle(FileType(t), name)
        report.checked += 1
        try:
            current = backend.retention(h)
            date = current[1].timestamp() if current is not None else None
            if date is None or date < due:
                backend.extend_retention(h, until)
                date = until.timestamp()
                report.renewed += 1
        except NotFound:  # gone behind the vault's back: the scrub reports it, nothing to lock
            report.missing += 1
            continue
        done.append((t, name, date))
        if len(done) >= BATCH:
            _write(vault, practice, done)
    _write(vault, practice, done)
    if report.renewed or report.missing:
        vault.audit_now(actor, "lock.renew", practice.name, "ok" if not report.missing else "missing",
                        {"renewed": report.renewed, "checked": report.checked, "missing": report.missing,
                         "until": until.timestamp()})
    return report


def _write(vault: Vault, practice: Practice, done: list[tuple[str, str, float]]) -> None:
    if not done:
        return
    o = db.objects
    with db.write(vault.engine) as conn:
        for t, name, date in done:
            conn.execute(o.update().where(o.c.practice_id == practice.id, o.c.type == t, o.c.name == name)
                         .values(locked_until=date))
    done.clear()

"""Rebuild the vault's database index from the stored objects alone.

``rebuild_index`` drops every object, blob and snapshot row of each practice and re-reads
storage: pack headers give blob -> pack, snapshot plain parts give references and verdicts.
The server receive time of a snapshot comes from the audit trail when it holds the record,
else it is set to *now* (the safe direction: a snapshot only looks younger, so retention keeps
it longer). ``reconcile`` is the incremental form run at start-up: it records objects that
reached storage but not the database (a crash between the two steps of an upload).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sqlalchemy as sa

from rempart.core.errors import IntegrityError, NotFound
from rempart.repository.format import PackEntry, parse_index, parse_snapshot, read_pack_header
from rempart.storage.base import Backend, FileType, Handle
from rempart.vault import db
from rempart.vault.practices import ensure_practice_row
from rempart.vault.service import Practice, Vault


@dataclass
class ReindexReport:
    practices: int = 0
    objects: int = 0
    blobs: int = 0
    snapshots: int = 0
    marks: int = 0  # legal holds and false-positive marks replayed from the audit trail
    skipped: list[str] = field(default_factory=list)


def _receive_times(vault: Vault, practice: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with vault.engine.connect() as conn:
        for r in conn.execute(sa.select(db.audit.c.time, db.audit.c.detail).where(
                db.audit.c.practice == practice, db.audit.c.action == "create.snapshots",
                db.audit.c.outcome == "ok")):
            try:
                out.setdefault(json.loads(r.detail or "{}").get("name", ""), r.time)
            except ValueError:
                continue
    return out


#: admin marks on snapshots that live only in the database, replayed from the audit trail
MARK_ACTIONS = ("snapshot.hold", "snapshot.release-hold", "snapshot.false-positive")


def _replay_marks(vault: Vault, p: Practice) -> int:
    """Put back the legal holds and false-positive marks the audit trail records for ``p``'s
    snapshots (in order: the last hold or release wins); returns how many snapshots got one."""
    marks: dict[str, dict[str, object]] = {}
    with vault.engine.connect() as conn:
        for r in conn.execute(sa.select(db.audit.c.time, db.audit.c.action, db.audit.c.detail).where(
                db.audit.c.practice == p.name, db.audit.c.action.in_(MARK_ACTIONS), db.audit.c.outcome == "ok")
                .order_by(db.audit.c.seq)):
            try:
                detail = json.loads(r.detail or "{}")
            except ValueError:
                continue
            m = marks.setdefault(str(detail.get("name", "")), {})
            if r.action == "snapshot.false-positive":
                m["false_positive"] = True
            elif r.action == "snapshot.hold":
                m.update(hold=str(detail.get("reason") or "held")[:200], held_at=r.time)
            else:
                m.update(hold=None, held_at=None)
    marks = {k: v for k, v in marks.items() if v.get("false_positive") or v.get("hold")}
    with db.write(vault.engine) as conn:
        done = 0
        for name, values in marks.items():
            done += conn.execute(db.snapshots.update().where(
                db.snapshots.c.practice_id == p.id, db.snapshots.c.name == name).values(**values)).rowcount
    return done


def _freeze_if_suspicious(vault: Vault, p: Practice) -> None:
    """A rebuilt practice holding a suspicious snapshot not marked false positive is frozen (the
    safe direction: an admin releases it again after looking)."""
    s = db.snapshots
    with db.write(vault.engine) as conn:
        if conn.execute(sa.select(s.c.name).where(s.c.practice_id == p.id, s.c.verdict == "suspicious",
                                                  s.c.false_positive.is_(False)).limit(1)).first():
            conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(
                frozen=True, frozen_reason="suspicious snapshot found by rebuild-index"))


def _index_practice(vault: Vault, p: Practice, report: ReindexReport, *, only_missing: bool) -> None:
    backend = vault.backend(p)
    with vault.engine.connect() as conn:
        known = {(r.type, r.name) for r in conn.execute(
            sa.select(db.objects.c.type, db.objects.c.name).where(
                db.objects.c.practice_id == p.id, db.objects.c.state.in_(("live", "superseded", "deleting", "retained"))))}
    times = _receive_times(vault, p.name)
    now = vault.now()
    order = [FileType.CONFIG, FileType.DATA, FileType.INDEX, FileType.SNAPSHOT]
    for ftype in order:
        for info in backend.list(ftype):
            if only_missing and (ftype.value, info.name) in known:
                continue
            h = Handle(ftype, info.name)
            try:
                with db.write(vault.engine) as conn:
                    db.lock_practice(conn, p.id)
                    if ftype is FileType.SNAPSHOT:
                        snap = parse_snapshot(backend.load(h))
                        if only_missing:
                            present = vault.present_blobs(conn, p.id, snap.refs)
                            if len(present) != len(snap.refs):
                                report.skipped.append(f"{p.name}/{h}: references missing blobs")
                                continue
                        vault.record_snapshot(conn, p, info.name, info.size, snap,
                                              received=times.get(info.name, now))
                        report.snapshots += 1
                    else:
                        if ftype is FileType.DATA:
                            entries = read_pack_entries(backend, h)
                            vault._record_blobs(conn, p.id, info.name, entries)
                            report.blobs += len(entries)
                        elif ftype is FileType.INDEX:
                            list(parse_index(backend.load(h)))
                        vault._record(conn, p.id, h, info.size)
                    report.objects += 1
            except (IntegrityError, NotFound) as exc:
                report.skipped.append(f"{p.name}/{h}: {exc.message}")


def rebuild_index(vault: Vault, *, actor: str) -> ReindexReport:
    report = ReindexReport()
    names = sorted({p.name for p in vault.practices()} | set(vault.store.practice_names()))
    for name in names:
        p = ensure_practice_row(vault, name)
        with db.write(vault.engine) as conn:
            for t in (db.objects, db.blobs, db.snapshots, db.snapshot_refs):
                conn.execute(t.delete().where(t.c.practice_id == p.id))
            conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(
                used_bytes=0, last_snapshot_at=None))
        _index_practice(vault, vault.practice(name), report, only_missing=False)
        report.marks += _replay_marks(vault, vault.practice(name))
        _freeze_if_suspicious(vault, vault.practice(name))
        report.practices += 1
    vault.audit_now(actor, "rebuild-index", None, "ok",
                    {"practices": report.practices, "objects": report.objects, "skipped": len(report.skipped),
                     "marks": report.marks})
    return report


def reconcile(vault: Vault, *, actor: str = "vault") -> ReindexReport:
    report = ReindexReport()
    for p in vault.practices():
        _index_practice(vault, p, report, only_missing=True)
        report.practices += 1
    if report.objects:
        vault.audit_now(actor, "reconcile", None, "ok", {"objects": report.objects})
    return report


def read_pack_entries(backend: Backend, h: Handle) -> list[PackEntry]:
    """Parse a stored pack's header reading only its tail."""
    try:
        header = read_pack_header(lambda offset, length: backend.load(h, offset=offset, length=length),
                                  backend.stat(h).size)
    except IntegrityError as exc:
        raise IntegrityError(f"{h}: {exc.message}") from exc
    return list(header.entries)

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
                        det = snap.plain.get("detection")
                        if isinstance(det, dict) and det.get("verdict") == "suspicious" and not only_missing:
                            conn.execute(db.practices.update().where(db.practices.c.id == p.id).values(
                                frozen=True, frozen_reason="suspicious snapshot found by rebuild-index"))
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
        report.practices += 1
    vault.audit_now(actor, "rebuild-index", None, "ok",
                    {"practices": report.practices, "objects": report.objects, "skipped": len(report.skipped)})
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

"""Retention (forget snapshots) and garbage collection of packs, without any key.

Safety argument (checked by the property tests in tests/vault/test_gc_properties.py):

* GC *marks* packs in one transaction holding the practice lock: a pack is a candidate only if
  no blob it holds is referenced by a kept snapshot, it was stored longer ago than the grace
  period and none of its blobs was reported by ``exists`` within the grace period. Marking
  deletes the pack's blob rows, so from then on ``exists`` says "absent" and a snapshot that
  references those blobs is refused (MissingBlobs) instead of being committed on a dying pack.
* Snapshot commits check their references while holding the same lock, so a commit and a mark
  are serialised: either the commit saw the blobs and the mark then sees the new references, or
  the mark ran first and the commit is refused.
* Each marked pack is removed from storage in its own locked transaction that re-checks it is
  still marked (a client may have re-uploaded it meanwhile, which makes it live again).
* While the practice is under incident freeze nothing is forgotten and nothing is deleted.
* A snapshot under legal hold (``practices.set_hold``) is kept whatever the policy says.

After deleting, GC writes one consolidated index file of all live packs and hides (then deletes,
when storage allows) the older index files, so clients learn the current set of blobs.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import NotFound, PermissionDenied
from rempart.repository.format import BlobType, PackEntry, encode_index
from rempart.storage.base import FileType, Handle
from rempart.storage.local import TMP_GRACE
from rempart.vault import closing, db
from rempart.vault.lockrenew import renew_locks
from rempart.vault.retention import SnapRecord, select_kept
from rempart.vault.service import CHUNK, Practice, Vault


@dataclass
class GcReport:
    practice: str
    frozen: bool = False
    forgotten: list[str] = field(default_factory=list)
    deleted_packs: list[str] = field(default_factory=list)
    retained_by_storage: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    new_index: str | None = None
    tmp_removed: int = 0  # leftovers of uploads cut short (local storage)
    renewed_locks: int = 0  # S3 Object Lock dates pushed forward on kept objects
    erased: bool = False  # a closed practice's last object went (rempart.vault.closing)


def referenced_packs(conn: Connection, pid: int, packs: list[str]) -> set[str]:
    b, r, s = db.blobs, db.snapshot_refs, db.snapshots
    out: set[str] = set()
    for i in range(0, len(packs), CHUNK):
        q = (
            sa.select(b.c.pack).distinct()
            .select_from(b.join(r, sa.and_(r.c.practice_id == b.c.practice_id, r.c.blob_id == b.c.blob_id))
                         .join(s, sa.and_(s.c.practice_id == r.c.practice_id, s.c.name == r.c.snapshot)))
            .where(b.c.practice_id == pid, s.c.state == "kept", b.c.pack.in_(packs[i : i + CHUNK]))
        )
        out.update(row[0] for row in conn.execute(q))
    return out


def forget(vault: Vault, practice: Practice, *, actor: str, report: GcReport) -> None:
    now = vault.now()
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, practice.id)
        p = vault.practice(practice.name, conn)
        if p.frozen:
            report.frozen = True
            vault.audit(conn, actor, "retention", p.name, "refused-frozen")
        else:
            rows = conn.execute(sa.select(db.snapshots).where(
                db.snapshots.c.practice_id == p.id, db.snapshots.c.state == "kept")).all()
            recs = [SnapRecord(r.name, r.received, r.verdict == "suspicious" and not r.false_positive) for r in rows]
            # a closed practice past its grace period keeps nothing but its held snapshots
            kept = set() if closing.erasing(vault, p) else select_kept(recs, p.policy, now)[0]
            kept |= {r.name for r in rows if r.hold is not None}  # legal holds outlast every rule
            gone = sorted(r.name for r in recs if r.name not in kept)
            for i in range(0, len(gone), CHUNK):
                part = gone[i : i + CHUNK]
                conn.execute(db.snapshots.update().where(db.snapshots.c.practice_id == p.id,
                                                         db.snapshots.c.name.in_(part)).values(state="forgotten"))
                conn.execute(db.objects.update().where(
                    db.objects.c.practice_id == p.id, db.objects.c.type == "snapshots", db.objects.c.name.in_(part)
                ).values(state="deleting"))
            report.forgotten = gone
            if gone:
                vault.audit(conn, actor, "retention", p.name, "ok", {"forgotten": len(gone)})
    vault.stat_cache.clear()
    vault.checkpoint(conn)


def _mark(vault: Vault, practice: Practice, *, actor: str, report: GcReport) -> bool:
    now = vault.now()
    cutoff = now - vault.config.gc_grace_seconds
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, practice.id)
        p = vault.practice(practice.name, conn)
        if p.frozen:
            report.frozen = True
            vault.audit(conn, actor, "gc", p.name, "refused-frozen")
            frozen = True
        else:
            frozen = False
    if frozen:
        vault.checkpoint(conn)
        return False
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, practice.id)
        p = vault.practice(practice.name, conn)
        o = db.objects
        old = [r.name for r in conn.execute(sa.select(o.c.name).where(
            o.c.practice_id == p.id, o.c.type == "data", o.c.state == "live", o.c.created < cutoff))]
        touched = {r[0] for r in conn.execute(sa.select(db.blobs.c.pack).distinct().where(
            db.blobs.c.practice_id == p.id, db.blobs.c.touched >= cutoff))}
        cands = [n for n in old if n not in touched]
        doomed = sorted(set(cands) - referenced_packs(conn, p.id, cands))
        for i in range(0, len(doomed), CHUNK):
            part = doomed[i : i + CHUNK]
            conn.execute(o.update().where(o.c.practice_id == p.id, o.c.type == "data", o.c.name.in_(part))
                         .values(state="deleting"))
            conn.execute(db.blobs.delete().where(db.blobs.c.practice_id == p.id, db.blobs.c.pack.in_(part)))
        if doomed:
            vault.audit(conn, actor, "gc.mark", p.name, "ok", {"packs": len(doomed)})
    vault.stat_cache.clear()  # packs now "deleting" are no longer served from the size cache
    vault.checkpoint(conn)
    return True


def _write_index(vault: Vault, practice: Practice, *, actor: str, report: GcReport) -> None:
    with db.write(vault.engine) as conn:
        db.lock_practice(conn, practice.id)
        by_pack: dict[str, list[PackEntry]] = defaultdict(list)
        for r in conn.execute(sa.select(db.blobs).where(db.blobs.c.practice_id == practice.id)
                              .order_by(db.blobs.c.pack, db.blobs.c.offset)):
            by_pack[r.pack].append(PackEntry(BlobType(r.btype), bytes(r.blob_id), int(r.offset), int(r.length)))
        data = encode_index((bytes.fromhex(k), v) for k, v in sorted(by_pack.items()))
        name = hashlib.sha256(data).hexdigest()
        h = Handle(FileType.INDEX, name)
        vault._save(practice, h, data)
        vault._record(conn, practice.id, h, len(data))
        conn.execute(db.objects.update().where(
            db.objects.c.practice_id == practice.id, db.objects.c.type == "index", db.objects.c.state == "live",
            db.objects.c.name != name).values(state="superseded"))
        vault.audit(conn, actor, "gc.index", practice.name, "ok", {"name": name, "packs": len(by_pack)})
        report.new_index = name
    vault.checkpoint(conn)


def _sweep(vault: Vault, practice: Practice, states: tuple[str, ...], types: tuple[str, ...],
           report: GcReport) -> None:
    o = db.objects
    with vault.engine.connect() as conn:
        todo = conn.execute(sa.select(o.c.type, o.c.name).where(
            o.c.practice_id == practice.id, o.c.state.in_(states), o.c.type.in_(types))).all()
    for t, name in todo:
        with db.write(vault.engine) as conn:
            db.lock_practice(conn, practice.id)
            row = vault.object_row(conn, practice.id, FileType(t), name)
            if row is None or row.state not in states:
                continue  # re-uploaded meanwhile: live again
            if t != "index" and vault.practice(practice.name, conn).frozen:
                report.frozen = True
                return
            try:
                vault.backend(practice).remove(Handle(FileType(t), name))
                new_state = "deleted"
            except NotFound:
                new_state = "deleted"
            except PermissionDenied:  # S3 Object Lock: the storage keeps it until its date
                new_state = "retained" if t != "index" else row.state
                report.retained_by_storage.append(name)
            conn.execute(o.update().where(o.c.practice_id == practice.id, o.c.type == t, o.c.name == name)
                         .values(state=new_state))
            if new_state in ("deleted", "retained") and row.state != "retained":
                conn.execute(db.practices.update().where(db.practices.c.id == practice.id)
                             .values(used_bytes=db.practices.c.used_bytes - row.size))
            if t == "data" and new_state == "deleted":
                report.deleted_packs.append(name)
                report.freed_bytes += int(row.size)


def run_gc(vault: Vault, practice: Practice, *, actor: str) -> GcReport:
    """Apply the retention policy, delete unreferenced packs and refresh the index; then, frozen
    or not, renew the S3 Object Lock of what is kept (:mod:`rempart.vault.lockrenew`)."""
    report = GcReport(practice.name)
    _collect(vault, practice, actor=actor, report=report)
    if not report.frozen and closing.erasing(vault, practice) and closing.mark_the_rest(vault, practice, actor=actor):
        _sweep(vault, practice, ("deleting", "retained", "superseded"), ("index", "config"), report)
        report.erased = closing.finish_if_erased(vault, vault.practice(practice.name), actor=actor)
    report.renewed_locks = renew_locks(vault, practice, actor=actor).renewed
    return report


def _collect(vault: Vault, practice: Practice, *, actor: str, report: GcReport) -> None:
    forget(vault, practice, actor=actor, report=report)
    if report.frozen:
        return
    clean = getattr(vault.store.backend(practice.name), "clean_tmp", None)
    if clean is not None:  # local storage: half-written uploads of a vault killed meanwhile
        report.tmp_removed = clean(older_than=TMP_GRACE, now=vault.clock.now().timestamp())
    _sweep(vault, practice, ("deleting",), ("snapshots",), report)
    if not _mark(vault, practice, actor=actor, report=report):
        return
    with vault.engine.connect() as conn:
        pending = conn.execute(sa.select(sa.func.count()).select_from(db.objects).where(
            db.objects.c.practice_id == practice.id, db.objects.c.type == "data",
            db.objects.c.state == "deleting")).scalar_one()
    if pending:
        _write_index(vault, practice, actor=actor, report=report)
        _sweep(vault, practice, ("deleting", "retained"), ("data",), report)
        _sweep(vault, practice, ("superseded",), ("index",), report)
        vault.audit_now(actor, "gc", practice.name, "ok",
                        {"deleted_packs": len(report.deleted_packs), "freed_bytes": report.freed_bytes})
    vault.stat_cache.clear()

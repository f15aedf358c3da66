"""The vault's replica: every practice's objects copied to a second storage (``[replica]``).

The 3-2-1 rule asks for a copy on another site; a provider hosting health data is asked for
one in another data centre of the EEA. ``[replica]`` names a second storage (a local folder on
another disk or mount, or an S3 bucket elsewhere, with its own Object Lock) and each
replication copies, per practice, every object missing from it with
:func:`rempart.repository.mirror.mirror`: no key, each object checked against its SHA-256 name
before it is written (a damaged object in the vault's storage is reported, not copied), packs
before index files before snapshots, so the replica is at every moment a set of restorable
repositories (``rempart -r <replica>/<practice> restore`` reads one with the practice's kit).

Deletions follow the vault, never lead: an object is removed from the replica only once the
vault's database records it as deleted from the vault's own storage by GC (refused by the
replica's Object Lock: kept, retried at the next pass). Objects the database does not know
stay. The replica's locks are its own (``lock_days`` from when each object was copied) and are
not renewed: the vault's storage stays the authority.

It runs after each practice's GC in the scheduled pass (``rempart.vault.gc_schedule``) and by
hand with ``rempart vault replicate``; each practice's run is audited (``replicate``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from rempart.core.errors import ConfigError, NotFound, PermissionDenied
from rempart.repository.mirror import ORDER, mirror
from rempart.storage.base import Backend, FileType, Handle
from rempart.vault import db
from rempart.vault.service import CHUNK, Practice, Vault
from rempart.vault.store import Store

log = logging.getLogger(__name__)


@dataclass
class ReplicaReport:
    practice: str
    copied: int = 0
    present: int = 0
    bytes: int = 0
    removed: int = 0
    kept_by_lock: int = 0
    damaged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"practice": self.practice, "copied": self.copied, "already_present": self.present,
                "bytes_copied": self.bytes, "removed": self.removed, "kept_by_lock": self.kept_by_lock,
                "damaged": self.damaged}


def open_replica(vault: Vault) -> Store:
    """The replica's store (its S3 bucket created with Object Lock when asked), or ConfigError."""
    if vault.config.replica is None:
        raise ConfigError("no [replica] in the vault config", hint="see docs/vault.md, 'Replica'")
    store = Store(vault.config.replica, vault.clock)
    store.prepare()
    return store


def replicate_practice(vault: Vault, replica: Store, practice: Practice, *, actor: str) -> ReplicaReport:
    """Copy what ``practice``'s replica lacks, then remove from it what the vault's GC deleted."""
    report = ReplicaReport(practice.name)
    dst = replica.backend(practice.name)
    m = mirror(vault.backend(practice), dst, workers=4)
    report.copied, report.present = sum(m.copied.values()), sum(m.present.values())
    report.bytes, report.damaged = m.bytes_copied, m.damaged
    _follow_deletions(vault, practice, dst, report)
    detail = {"copied": report.copied, "bytes": report.bytes, "removed": report.removed,
              "kept_by_lock": report.kept_by_lock, "damaged": report.damaged[:20]}
    vault.audit_now(actor, "replicate", practice.name, "damaged" if report.damaged else "ok", detail)
    if report.damaged:
        log.error("replication of %s: %d damaged object(s) in the vault's storage, not copied: %s",
                  practice.name, len(report.damaged), ", ".join(report.damaged[:5]))
    return report


def _follow_deletions(vault: Vault, practice: Practice, dst: Backend, report: ReplicaReport) -> None:
    o = db.objects
    for t in (*ORDER, FileType.CONFIG):  # the config too: a closed practice's erasure reaches here
        names = sorted(f.name for f in dst.list(t))
        for i in range(0, len(names), CHUNK):
            with vault.engine.connect() as conn:
                deleted = [r[0] for r in conn.execute(sa.select(o.c.name).where(
                    o.c.practice_id == practice.id, o.c.type == t.value, o.c.state == "deleted",
                    o.c.name.in_(names[i : i + CHUNK])))]
            for name in deleted:
                try:
                    dst.remove(Handle(t, name))
                    report.removed += 1
                except NotFound:
                    pass
                except PermissionDenied:  # the replica's own Object Lock: next pass
                    report.kept_by_lock += 1


@dataclass
class RepairReport:
    practice: str
    repaired: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # object -> why it could not be put back

    def to_dict(self) -> dict[str, object]:
        return {"practice": self.practice, "repaired": self.repaired, "failed": self.failed}


def repair_from_replica(vault: Vault, replica: Store, practice: Practice, *, actor: str) -> RepairReport:
    """Put back, from the replica, each object the scrub found damaged in the vault's storage:
    the replica's bytes are used only if they hash to the object's name, then the object is
    scrubbed again (which clears its damage and the watch's alert). A vault on S3 cannot
    rewrite a version under Object Lock: refused there, with the reason."""
    from rempart.vault.scrub import check_object

    report = RepairReport(practice.name)
    o = db.objects
    with vault.engine.connect() as conn:
        rows = conn.execute(sa.select(o.c.type, o.c.name, o.c.size).where(
            o.c.practice_id == practice.id, o.c.state.in_(("live", "superseded")),
            o.c.damage.is_not(None)).order_by(o.c.type, o.c.name)).all()
    if not rows:
        return report
    primary = vault.backend(practice)
    put_back = getattr(primary, "put_back", None)
    source = replica.backend(practice.name)
    for t, name, size in rows:
        h = Handle(FileType(t), name)
        if put_back is None:
            report.failed[str(h)] = "the vault's storage cannot rewrite an object (S3 Object Lock)"
            continue
        try:
            data = source.load(h)
        except NotFound:
            report.failed[str(h)] = "not in the replica"
            continue
        if hashlib.sha256(data).hexdigest() != name:
            report.failed[str(h)] = "damaged in the replica too"
            continue
        put_back(h, data)
        damage = check_object(vault, practice, h, size)  # read back from the vault's storage
        with db.write(vault.engine) as conn:
            conn.execute(o.update().where(o.c.practice_id == practice.id, o.c.type == t, o.c.name == name)
                         .values(verified=vault.now(), damage=damage))
        if damage:
            report.failed[str(h)] = f"still {damage} after it was put back"
        else:
            report.repaired.append(str(h))
    vault.audit_now(actor, "repair", practice.name, "ok" if not report.failed else "failed",
                    {"repaired": report.repaired[:20], "failed": dict(list(report.failed.items())[:20])})
    return report

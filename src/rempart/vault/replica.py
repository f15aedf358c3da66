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

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from rempart.core.errors import ConfigError, NotFound, PermissionDenied
from rempart.repository.mirror import ORDER, mirror
from rempart.storage.base import Backend, Handle
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
    for t in ORDER:
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

"""Scrub: re-read stored objects and check each still hashes to its name, without any key.

Every pack, index file and snapshot is named by the SHA-256 of its bytes (the vault refuses an
upload otherwise), so the vault can prove, on its own and at any time, that what its storage
returns is what it accepted: a flipped bit on a disk, a truncated or vanished file, an object
an operator "fixed" by hand. A restore drill (``rempart drill``) proves a snapshot decrypts, but
needs the kit and runs monthly per practice; the scrub needs nothing and sees every practice.

A pass takes a practice's live objects, least recently verified first (never verified first),
up to ``max_bytes`` (at least one object), so that a budget per night cycles through all the
data over several nights. For each object it records the time and what was wrong, if anything
(``objects.verified``, ``objects.damage``: ``missing``, ``size``, ``sha256``, or ``unreadable``
for a storage error); a later pass that finds the bytes right again (restored from a replica)
clears the damage. Damaged objects are never deleted or rewritten by the scrub: the watch raises
a red ``damage`` alert (``rempart.vault.watch.rules``) and a person decides. An object that GC
removes while the pass reads it is skipped, not reported. Each pass writes one audit record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sqlalchemy as sa

from rempart.core.errors import NotFound, RempartError
from rempart.storage.base import FileType, Handle
from rempart.vault import db
from rempart.vault.service import Practice, Vault

#: bytes read per request (bounded memory, also for S3 ranged reads)
PIECE = 4 << 20
#: damaged objects named in one audit record (the rest are counted)
AUDIT_NAMES = 20


@dataclass
class ScrubReport:
    practice: str
    objects: int = 0
    bytes: int = 0
    damaged: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, damage)
    repaired: int = 0  # objects damaged at the last pass and right now

    def to_dict(self) -> dict[str, object]:
        return {"practice": self.practice, "objects": self.objects, "bytes": self.bytes, "repaired": self.repaired,
                "damaged": [{"type": t, "name": n, "damage": d} for t, n, d in self.damaged]}


def check_object(vault: Vault, practice: Practice, h: Handle, size: int) -> str | None:
    """What is wrong with the stored bytes of ``h`` (None: they hash to its name)."""
    backend = vault.backend(practice)
    try:
        if backend.stat(h).size != size:
            return "size"
        digest = hashlib.sha256()
        for offset in range(0, size, PIECE):
            digest.update(backend.load(h, offset=offset, length=min(PIECE, size - offset)))
    except NotFound:
        return "missing"
    except RempartError:
        return "unreadable"
    return None if digest.hexdigest() == h.name else "sha256"


def scrub_practice(vault: Vault, practice: Practice, *, max_bytes: int | None = None, actor: str = "vault-scrub") -> ScrubReport:
    """One pass over ``practice`` (see the module docstring)."""
    o = db.objects
    with vault.engine.connect() as conn:
        rows = conn.execute(sa.select(o.c.type, o.c.name, o.c.size, o.c.damage).where(
            o.c.practice_id == practice.id, o.c.state.in_(("live", "superseded")), o.c.type != FileType.CONFIG.value,
        ).order_by(o.c.verified.is_not(None), o.c.verified, o.c.type, o.c.name)).all()
    report = ScrubReport(practice.name)
    for row in rows:
        if max_bytes is not None and report.objects and report.bytes + row.size > max_bytes:
            break
        h = Handle(FileType(row.type), row.name)
        damage = check_object(vault, practice, h, row.size)
        with db.write(vault.engine) as conn:
            still = conn.execute(sa.select(o.c.state).where(
                o.c.practice_id == practice.id, o.c.type == row.type, o.c.name == row.name)).scalar()
            if still not in ("live", "superseded"):
                continue  # GC took it meanwhile: nothing to say about it
            conn.execute(o.update().where(o.c.practice_id == practice.id, o.c.type == row.type, o.c.name == row.name)
                         .values(verified=vault.now(), damage=damage))
        report.objects += 1
        report.bytes += row.size
        if damage:
            report.damaged.append((row.type, row.name, damage))
        elif row.damage:
            report.repaired += 1
    with db.write(vault.engine) as conn:
        vault.audit(conn, actor, "scrub", practice.name, "damaged" if report.damaged else "ok", {
            "objects": report.objects, "bytes": report.bytes, "repaired": report.repaired,
            "damaged": len(report.damaged), "names": [f"{t}/{n}:{d}" for t, n, d in report.damaged[:AUDIT_NAMES]]})
    vault.checkpoint(conn)
    return report


def damaged_count(conn: sa.engine.Connection, practice_id: int) -> int:
    """Live objects of the practice whose last scrub found them damaged."""
    o = db.objects
    return int(conn.execute(sa.select(sa.func.count()).select_from(o).where(
        o.c.practice_id == practice_id, o.c.state.in_(("live", "superseded")), o.c.damage.is_not(None))).scalar_one())

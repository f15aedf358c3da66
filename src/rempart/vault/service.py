"""The vault's operations on stored objects, independent of HTTP (routes call these).

Create-only ingestion: the route receives the upload (digest computed while streaming): a pack
bound for local storage straight into a temporary file (:mod:`rempart.vault.staging`), anything
else in memory. Then :meth:`Vault.ingest` validates it against the plain format, checks the
quota, stores it (``StagedUpload.publish`` or ``Backend.save``: fsynced, atomic, create-only)
and only then records it in the database, so a half-finished upload is never visible and an
object recorded in the database is always in storage. Snapshots are checked and stored while
the practice is locked, so GC can never delete a blob between the reference check and the commit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rempart.core.clock import Clock
from rempart.core.errors import (
    AlreadyExists,
    IntegrityError,
    MissingBlobs,
    NotFound,
    PermissionDenied,
    UserError,
)
from rempart.repository.format import PackEntry, parse_index, parse_pack_header, parse_snapshot
from rempart.storage.base import Backend, FileInfo, FileType, Handle
from rempart.vault import audit, db
from rempart.vault.authcache import TtlCache
from rempart.vault.config import RetentionPolicy, VaultConfig
from rempart.vault.quota import Claim, QuotaClaims, over_quota, usage
from rempart.vault.staging import StagedUpload
from rempart.vault.store import Store, check_practice_name

CHUNK = 500
_SQLITE_INSERT_BLOBS = ('INSERT INTO blobs (practice_id, blob_id, pack, btype, "offset", length, touched) '
                        "VALUES (?, ?, ?, ?, ?, ?, NULL)")


@dataclass(frozen=True)
class Practice:
    id: int
    name: str
    quota_bytes: int
    used_bytes: int
    frozen: bool
    frozen_reason: str | None
    policy: RetentionPolicy
    last_snapshot_at: float | None
    closed_at: float | None = None  # end of contract (rempart.vault.closing)
    erased_at: float | None = None


class Vault:
    def __init__(self, config: VaultConfig, engine: Engine, store: Store, clock: Clock) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.clock = clock
        self._pending = threading.local()
        # hot-route caches (see authcache): token hash -> (Principal, Practice | None), and
        # (practice id, type, name) -> size of a live object
        self.auth_cache: TtlCache[Any] = TtlCache(clock.monotonic)
        self.stat_cache: TtlCache[int] = TtlCache(clock.monotonic)
        #: bytes of uploads past the quota check and not recorded yet (see rempart.vault.quota)
        self.quota = QuotaClaims()

    def now(self) -> float:
        return self.clock.now().timestamp()

    # --- audit -------------------------------------------------------------------------

    def audit(self, conn: Connection, actor: str, action: str, practice: str | None, outcome: str,
              detail: dict[str, Any] | None = None) -> None:
        self._pending.head = audit.append(conn, time=self.now(), actor=actor, action=action, practice=practice,
                                          outcome=outcome, detail=detail)

    def checkpoint(self, _conn: Connection | None = None) -> None:
        """After a commit: record this thread's last audit head in the checkpoint file."""
        head = getattr(self._pending, "head", None)
        self._pending.head = None
        if head is None:
            return
        with self.engine.connect() as c:  # only if it was committed (not rolled back)
            stored = c.execute(sa.select(db.audit.c.hash).where(db.audit.c.seq == head[0])).scalar()
        if stored == head[1]:
            audit.write_checkpoint(self.config.audit_checkpoint, *head)

    def audit_now(self, actor: str, action: str, practice: str | None, outcome: str,
                  detail: dict[str, Any] | None = None) -> None:
        with db.write(self.engine) as conn:
            self.audit(conn, actor, action, practice, outcome, detail)
        self.checkpoint(conn)

    # --- practices ---------------------------------------------------------------------

    def practice_from_row(self, row: Any) -> Practice:
        policy = RetentionPolicy.from_dict(json.loads(row.policy)) if row.policy else self.config.retention
        return Practice(row.id, row.name, int(row.quota_bytes or 0), int(row.used_bytes or 0), bool(row.frozen),
                        row.frozen_reason, policy, row.last_snapshot_at, row.closed_at, row.erased_at)

    def practice(self, name: str, conn: Connection | None = None) -> Practice:
        check_practice_name(name)
        q = sa.select(db.practices).where(db.practices.c.name == name)
        if conn is None:
            with self.engine.connect() as c:
                row = c.execute(q).first()
        else:
            row = conn.execute(q).first()
        if row is None:
            raise NotFound(f"practice {name!r} does not exist")
        return self.practice_from_row(row)

    def practices(self) -> list[Practice]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(db.practices).order_by(db.practices.c.name)).all()
        return [self.practice_from_row(r) for r in rows]

    def backend(self, practice: Practice) -> Backend:
        return self.store.backend(practice.name)

    # --- reads -------------------------------------------------------------------------

    def object_row(self, conn: Connection, pid: int, ftype: FileType, name: str) -> Any:
        return conn.execute(
            sa.select(db.objects).where(
                db.objects.c.practice_id == pid, db.objects.c.type == ftype.value, db.objects.c.name == name
            )
        ).first()

    def stat(self, practice: Practice, h: Handle, *, cached: bool = False) -> FileInfo:
        """The size of a live (or superseded) object. ``cached``: a size looked up in the last
        few seconds may answer (GC and deletions in this process clear the cache)."""
        key = (practice.id, h.type, h.name)
        if cached:
            size = self.stat_cache.get(key)
            if size is not None:
                return FileInfo(h.name, size)
        with self.engine.connect() as conn:
            row = self.object_row(conn, practice.id, h.type, h.name)
        if row is None or row.state not in ("live", "superseded"):
            raise NotFound(f"{h} not found")
        if cached:
            self.stat_cache.put(key, int(row.size))
        return FileInfo(h.name, int(row.size))

    def load(self, practice: Practice, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        self.stat(practice, h)
        return self.backend(practice).load(h, offset=offset, length=length)

    def list_files(self, practice: Practice, ftype: FileType) -> list[FileInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(db.objects.c.name, db.objects.c.size)
                .where(db.objects.c.practice_id == practice.id, db.objects.c.type == ftype.value,
                       db.objects.c.state == "live")
                .order_by(db.objects.c.name)
            ).all()
        return [FileInfo(r.name, int(r.size)) for r in rows]

    def present_blobs(self, conn: Connection, pid: int, ids: Iterable[bytes]) -> set[bytes]:
        ids = list(ids)
        found: set[bytes] = set()
        sqlite = conn.dialect.name == "sqlite"
        for i in range(0, len(ids), CHUNK):
            part = ids[i : i + CHUNK]
            if sqlite:  # through the driver: half the time of SQLAlchemy's per-row results (a
                # snapshot's ~6000 refs are checked while its agent waits for the answer)
                marks = ",".join("?" * len(part))  # placeholders only: the ids are parameters
                found.update(r[0] for r in conn.exec_driver_sql(
                    f"SELECT blob_id FROM blobs WHERE practice_id = ? AND blob_id IN ({marks})",  # noqa: S608
                    (pid, *part)).fetchall())
                continue
            found.update(
                r[0] for r in conn.execute(
                    sa.select(db.blobs.c.blob_id).where(db.blobs.c.practice_id == pid, db.blobs.c.blob_id.in_(part))
                )
            )
        return found

    def exists(self, practice: Practice, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` are stored; marks them touched now (GC keeps them a grace period)."""
        now = self.now()
        with db.write(self.engine) as conn:
            db.lock_practice(conn, practice.id)
            found = self.present_blobs(conn, practice.id, ids)
            fl = list(found)
            for i in range(0, len(fl), CHUNK):
                conn.execute(
                    db.blobs.update()
                    .where(db.blobs.c.practice_id == practice.id, db.blobs.c.blob_id.in_(fl[i : i + CHUNK]))
                    .values(touched=now)
                )
        return found

    # --- ingestion ---------------------------------------------------------------------

    def ingest(self, actor: str, practice: Practice, h: Handle, data: bytes | StagedUpload) -> bool:
        """Validate and store one uploaded object (its bytes, or a pack staged in a temporary
        file whose SHA-256 the caller checked); True if created, False if already there."""
        if practice.closed_at is not None:
            raise PermissionDenied(f"practice {practice.name} is closed: it takes no more backups")
        staged: StagedUpload | None = None
        raw = b""
        if isinstance(data, StagedUpload):
            if h.type is not FileType.DATA:
                raise UserError(f"only packs are staged, not {h.type.value} files")
            staged, size = data, data.size
        else:
            raw, size = data, len(data)
        with self.engine.connect() as conn:
            row = self.object_row(conn, practice.id, h.type, h.name)
        if row is not None and row.state in ("live", "superseded"):
            if h.type is FileType.CONFIG and self.backend(practice).load(h) != raw:
                raise AlreadyExists("the repository config exists already with different content")
            return False
        entries: list[PackEntry] = []
        snap = None
        if staged is not None:
            entries = staged.pack_entries()
        elif h.type is FileType.DATA:
            entries = list(parse_pack_header(raw, size).entries)
        elif h.type is FileType.INDEX:
            packs = [p.hex() for p, _ in parse_index(raw)]
            self._check_index_packs(practice, packs)
        elif h.type is FileType.SNAPSHOT:
            snap = parse_snapshot(raw)
        elif h.type is FileType.CONFIG:
            try:
                if not isinstance(json.loads(raw), dict):
                    raise ValueError
            except ValueError as exc:
                raise IntegrityError("the repository config must be a JSON object") from exc
        else:
            raise UserError(f"the vault does not store {h.type.value} files")
        # the caller's practice may be a few seconds old: the quota is checked on a fresh read.
        # An object still counted in used_bytes (a pack GC marked "deleting") adds nothing and
        # claims nothing; if the sweep removed it meanwhile, the check in the transaction sees it
        claim = self.quota.claim(practice.id, practice.name, size, lambda: self._usage_now(practice.id)) \
            if practice.quota_bytes and not _counted(row) else nullcontext()
        try:
            if snap is not None:
                return self._commit_snapshot(actor, practice, h, raw, snap, claim)
            revived = row is not None  # GC marked or removed it before: serialise with GC's sweep
            if not revived:
                self._save(practice, h, data)
            with claim, db.write(self.engine) as conn:
                if revived or practice.quota_bytes:  # serialise with GC's sweep / other uploads' checks
                    db.lock_practice(conn, practice.id)
                self._check_quota(conn, practice, h, size)
                if revived:
                    self._save(practice, h, data)
                self._record(conn, practice.id, h, size)
                if entries:
                    self._record_blobs(conn, practice.id, h.name, entries)
                self.audit(conn, actor, f"create.{h.type.value}", practice.name, "ok", {"name": h.name, "size": size})
        finally:
            if isinstance(claim, Claim):
                claim.release()  # refused or failed (a no-op once committed)
        self.checkpoint(conn)
        return True

    def _usage_now(self, pid: int) -> tuple[int, int]:
        with self.engine.connect() as conn:
            return usage(conn, pid)

    def _check_quota(self, conn: Connection, practice: Practice, h: Handle, size: int) -> None:
        """Inside the transaction that records ``h`` (the practice locked): refuse it if it
        would take the practice over its quota (only another vault process's uploads can make
        this fail after a claim: see :mod:`rempart.vault.quota`)."""
        if practice.quota_bytes and not _counted(self.object_row(conn, practice.id, h.type, h.name)):
            used, quota = usage(conn, practice.id)
            if quota and used + size > quota:
                raise over_quota(practice.name, used, quota)

    def _save(self, practice: Practice, h: Handle, data: bytes | StagedUpload) -> None:
        if isinstance(data, StagedUpload):
            data.publish()  # False if stored before a crash, not yet recorded: same name = same bytes
            return
        try:
            self.backend(practice).save(h, data)
        except AlreadyExists:
            # stored before a crash, not yet recorded: same name = same bytes (sha-named),
            # config is compared
            if h.type is FileType.CONFIG and self.backend(practice).load(h) != data:
                raise

    def _check_index_packs(self, practice: Practice, packs: list[str]) -> None:
        live: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(packs), CHUNK):
                live.update(
                    r[0] for r in conn.execute(
                        sa.select(db.objects.c.name).where(
                            db.objects.c.practice_id == practice.id, db.objects.c.type == "data",
                            db.objects.c.state == "live", db.objects.c.name.in_(packs[i : i + CHUNK]),
                        )
                    )
                )
        missing = sorted(set(packs) - live)
        if missing:
            raise MissingBlobs(f"the index file names {len(missing)} pack(s) the vault does not hold", missing=missing)

    def _record(self, conn: Connection, pid: int, h: Handle, size: int) -> None:
        """Make ``h`` live; its size joins the practice's ``used_bytes`` unless already counted
        there (a pack GC marked "deleting" is counted until the sweep removes it)."""
        row = self.object_row(conn, pid, h.type, h.name)
        if row is not None and row.state in ("live", "superseded"):
            return
        counted = _counted(row)
        if row is None:
            conn.execute(db.objects.insert().values(practice_id=pid, type=h.type.value, name=h.name, size=size,
                                                    created=self.now(), state="live"))
        else:
            conn.execute(
                db.objects.update()
                .where(db.objects.c.practice_id == pid, db.objects.c.type == h.type.value, db.objects.c.name == h.name)
                .values(state="live", created=self.now(), size=size, locked_until=None)
            )
        if not counted:
            conn.execute(db.practices.update().where(db.practices.c.id == pid)
                         .values(used_bytes=db.practices.c.used_bytes + size))

    def _record_blobs(self, conn: Connection, pid: int, pack: str, entries: list[PackEntry]) -> None:
        conn.execute(db.blobs.delete().where(db.blobs.c.practice_id == pid, db.blobs.c.pack == pack))
        if conn.dialect.name == "sqlite":
            # the DB-API's executemany with plain tuples: SQLAlchemy's per-row parameter
            # processing cost ~10 ms of vault CPU per pack of ~1000 blobs
            conn.exec_driver_sql(_SQLITE_INSERT_BLOBS, [(pid, e.id, pack, int(e.type), e.offset, e.length)
                                                        for e in entries])
            return
        rows = [dict(practice_id=pid, blob_id=e.id, pack=pack, btype=int(e.type), offset=e.offset,
                     length=e.length, touched=None) for e in entries]
        for i in range(0, len(rows), 1000):
            conn.execute(db.blobs.insert(), rows[i : i + 1000])

    def _commit_snapshot(self, actor: str, practice: Practice, h: Handle, data: bytes, snap: Any,
                         claim: AbstractContextManager[Any]) -> bool:
        plain = snap.plain
        detection = plain.get("detection") if isinstance(plain.get("detection"), dict) else {}
        verdict = "suspicious" if detection.get("verdict") == "suspicious" else "clean"
        with claim, db.write(self.engine) as conn:
            db.lock_practice(conn, practice.id)
            self._check_quota(conn, practice, h, len(data))
            present = self.present_blobs(conn, practice.id, snap.refs)
            missing = [r.hex() for r in snap.refs if r not in present]
            if missing:
                raise MissingBlobs(
                    f"the snapshot references {len(missing)} blob(s) the vault does not hold", missing=missing
                )
            self._save(practice, h, data)
            self.record_snapshot(conn, practice, h.name, len(data), snap, received=self.now())
            self.audit(conn, actor, "create.snapshots", practice.name, "ok", {"name": h.name, "verdict": verdict})
            if verdict == "suspicious" and not self.practice(practice.name, conn).frozen:
                self.set_frozen(conn, practice, True, "suspicious snapshot received", actor="vault")
        self.checkpoint(conn)
        return True

    def record_snapshot(self, conn: Connection, practice: Practice, name: str, size: int, snap: Any,
                        *, received: float) -> None:
        plain = snap.plain
        detection = plain.get("detection") if isinstance(plain.get("detection"), dict) else {}
        verdict = "suspicious" if detection.get("verdict") == "suspicious" else "clean"
        self._record(conn, practice.id, Handle(FileType.SNAPSHOT, name), size)
        conn.execute(db.snapshots.delete().where(db.snapshots.c.practice_id == practice.id,
                                                 db.snapshots.c.name == name))
        conn.execute(db.snapshot_refs.delete().where(db.snapshot_refs.c.practice_id == practice.id,
                                                     db.snapshot_refs.c.snapshot == name))
        conn.execute(db.snapshots.insert().values(
            practice_id=practice.id, name=name, received=received, client_time=str(plain.get("time", ""))[:64],
            verdict=verdict, detection=json.dumps(detection)[:20000],
            stats=json.dumps(plain.get("stats", {}))[:20000], false_positive=False, state="kept",
        ))
        if conn.dialect.name == "sqlite":  # the driver's executemany with tuples (as blob rows)
            conn.exec_driver_sql("INSERT INTO snapshot_refs (practice_id, snapshot, blob_id) VALUES (?, ?, ?)",
                                 [(practice.id, name, r) for r in snap.refs])
        else:
            refs = [dict(practice_id=practice.id, snapshot=name, blob_id=r) for r in snap.refs]
            for i in range(0, len(refs), 1000):
                conn.execute(db.snapshot_refs.insert(), refs[i : i + 1000])
        conn.execute(db.practices.update().where(db.practices.c.id == practice.id).values(
            last_snapshot_at=sa.func.coalesce(sa.func.max(db.practices.c.last_snapshot_at, received), received)
            if conn.dialect.name == "sqlite" else
            sa.func.greatest(sa.func.coalesce(db.practices.c.last_snapshot_at, received), received)
        ))

    def set_frozen(self, conn: Connection, practice: Practice, frozen: bool, reason: str, *, actor: str) -> None:
        conn.execute(db.practices.update().where(db.practices.c.id == practice.id).values(
            frozen=frozen, frozen_reason=reason[:200] if frozen else None, frozen_at=self.now() if frozen else None))
        self.audit(conn, actor, "freeze" if frozen else "release", practice.name, "ok", {"reason": reason[:200]})


def _counted(row: Any) -> bool:
    """The object of this row (None: no row) is counted in its practice's ``used_bytes``:
    every state but removed ("deleted") and kept by the storage's lock only ("retained")."""
    return row is not None and row.state not in ("deleted", "retained")

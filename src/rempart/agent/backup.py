"""One backup run: archiver + state cache + detection + snapshot commit."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from rempart import __version__
from rempart.agent.credentials import AgentCredential, repo_state_dir
from rempart.core.clock import Clock, to_iso
from rempart.core.errors import LocalError, MissingBlobs, UserError, is_damaged_database, local_error
from rempart.repository.lock_holder import NoLock, RepoLock, take_backup_lock
from rempart.repository.locks import LockPolicy
from rempart.repository.repo import Repository, WriteSession
from rempart.snapshot.archiver import Archiver
from rempart.snapshot.cache import StateCache
from rempart.snapshot.options import BackupOptions, BackupStats, FileObserver
from rempart.snapshot.statefiles import set_aside
from rempart.storage.local import TMP_GRACE, LocalBackend
from rempart.storage.wrappers import beneath


@dataclass
class BackupResult:
    snapshot: str
    stats: BackupStats
    session_stats: dict[str, int]
    detection: dict[str, Any] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)
    #: what a person should know although the backup is complete (a damaged cache set aside)
    notices: list[str] = field(default_factory=list)

    @property
    def suspicious(self) -> bool:
        return self.detection.get("verdict") == "suspicious"


class DetectionHook(FileObserver, Protocol):
    """What the archiver needs from detection, plus the end-of-run assessment."""

    def assess(self, cache: StateCache, total_files: int, now: str) -> tuple[dict[str, Any], list[str]]:
        ...

    def commit_state(self) -> dict[str, str]:
        ...


def run_backup(
    repo: Repository,
    cred: AgentCredential,
    paths: list[Path],
    state_dir: Path,
    clock: Clock,
    *,
    options: BackupOptions | None = None,
    detection: DetectionHook | None = None,
    tags: list[str] | None = None,
    progress: Callable[[BackupStats], None] | None = None,
    lock_policy: LockPolicy | None = None,
) -> BackupResult:
    if cred.repo_id != repo.config.id:
        raise UserError("the agent key belongs to another repository")
    if cred.public_key.raw != repo.config.public_key.raw:
        raise UserError("the repository's recovery key differs from this agent's key")
    sources = []
    for p in paths:
        ap = Path(p).absolute()
        if not ap.exists() and not ap.is_symlink():
            raise UserError(f"{p}: no such file or folder")
        sources.append(ap)
    options = options or BackupOptions()
    folder = repo_state_dir(state_dir, repo.config.id)
    cache = StateCache(folder)
    notices = []
    if cache.set_aside is not None:
        notices.append(f"the local state cache was damaged and has been moved to {cache.set_aside}; "
                       "this backup reads every file again (nothing already stored is uploaded again)")
    try:
        repo.use_index_cache(folder / "index.sqlite")
    except BaseException:
        cache.close()
        raise
    backend = repo.backend
    lock: RepoLock | NoLock = NoLock()
    try:
        # held from before the index is read until the snapshot is stored: no prune meanwhile;
        # nothing is stored once it could have expired (the process was paused too long)
        lock = take_backup_lock(backend, repo.config.id, clock, lock_policy)
        folder_backend = beneath(backend)
        own = [state_dir]
        if isinstance(folder_backend, LocalBackend):  # temporary files of a backup killed earlier
            folder_backend.clean_tmp(older_than=TMP_GRACE, now=clock.now().timestamp())
            own.append(folder_backend.root)
        options = replace(options, skip_dirs=options.skip_dirs | _identities(own))
        repo.backend = lock.guard(backend)
        for attempt in range(2):
            repo.load_index()
            # as many packs in flight as the storage takes connections: through a vault or S3 an
            # upload is latency-bound (each pack waits for its round trip and the far side's fsync), locally two suffice
            n = max(2, repo.backend.properties.connections)
            session = WriteSession(repo, cred.id_key, uploaders=n, max_inflight=n)
            try:
                archiver = Archiver(session, cache, options, now=clock.now().timestamp(),
                                    observer=detection, progress=progress)
                tree = archiver.archive(sources)
                session.flush()
                deleted = cache.deleted_count()
                det: dict[str, Any] = {}
                damaged: list[str] = []
                if detection is not None:
                    det, damaged = detection.assess(cache, archiver.stats.files, to_iso(clock.now()))
                plain = {
                    "v": 1,
                    "time": to_iso(clock.now()),
                    "tree": tree.hex(),
                    "parent": cache.get_meta("last_snapshot"),
                    "host": hashlib.sha256(f"{repo.config.id}:{socket.gethostname()}".encode()).hexdigest()[:16],
                    "stats": archiver.stats.to_dict() | {"deleted": deleted},
                    "detection": det,
                }
                meta: dict[str, object] = {
                    "hostname": socket.gethostname(),
                    "paths": [str(s) for s in sources],
                    "tags": tags or [],
                    "program": f"rempart {__version__}",
                    "warnings": archiver.stats.warnings[:1000],
                    "damaged": damaged[:10000],
                }
                try:
                    name = session.commit(plain, archiver.refs, meta)
                except MissingBlobs:
                    # garbage collection removed blobs we deduplicated against: forget what we
                    # knew and run once more (the second pass re-reads and re-uploads them)
                    if attempt:
                        raise
                    repo.index.clear()
                    cache.reset_run()
                    continue
                extra = {"last_time": str(plain["time"])}
                if detection is not None:
                    extra.update(detection.commit_state())
                cache.commit(name, extra)
                repo.index.mark_intact()
                notices += [f"{p} is left out: it holds this machine's backups or their state" for p in archiver.left_out]
                return BackupResult(name, archiver.stats, dict(session.stats), det, damaged, notices)
            finally:
                session.close()
        raise AssertionError("unreachable")  # pragma: no cover
    except sqlite3.DatabaseError as exc:
        # the state cache (or the index cache) went bad during the run: nothing was committed;
        # set the damaged file aside so that the next run starts afresh instead of failing again
        if not is_damaged_database(exc):
            raise local_error(f"state folder {folder}", exc) from exc
        cache.db.close()  # the lock stays held until the files are moved
        repo.close()
        moved = [set_aside(p) for p in (folder / "cache.sqlite", folder / "index.sqlite") if p.exists()]
        raise LocalError(f"the local state cache was found damaged during the backup; no snapshot was stored "
                         f"and the damaged files were moved aside ({', '.join(m.name for m in moved)})",
                         hint="run the backup again: it will read every file (nothing already stored is "
                              "uploaded again)") from exc
    finally:
        repo.backend = backend
        lock.release()
        cache.close()


def _identities(folders: list[Path]) -> frozenset[tuple[int, int]]:
    """(device, inode) of each folder that exists."""
    out = set()
    for folder in folders:
        try:
            st = folder.stat()
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return frozenset(out)

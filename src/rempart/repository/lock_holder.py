"""The lock a running backup or prune holds (format, staleness, rules: ``rempart.repository.locks``).

``RepoLock.take`` writes the lock file, then reads every lock and gives up on a conflict; a
daemon thread refreshes it every lifetime/6; ``check`` raises before an irreversible step (a
snapshot commit, a pack deletion) once the lock went unrefreshed for lifetime/2; ``release``
removes the lock's files, or records the release where the storage refuses deletes.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from typing import Any

from rempart.core.clock import Clock
from rempart.core.errors import BackendError, LockedError, NotFound, PermissionDenied
from rempart.repository.locks import (
    BACKUP,
    PRUNE,
    RELEASE,
    LockFile,
    LockPolicy,
    Owner,
    corrupt_error,
    encode_lock,
    process_alive,
    read_locks,
)
from rempart.storage.base import Backend, FileType, Handle
from rempart.storage.wrappers import Wrapper


class RepoLock:
    """A lock this process holds: ``take``, ``check`` before every irreversible step, ``release``."""

    def __init__(self, backend: Backend, kind: str, owner: Owner, clock: Clock,
                 policy: LockPolicy | None = None, alive: Callable[[int], bool] = process_alive) -> None:
        if kind not in (BACKUP, PRUNE):
            raise ValueError(kind)
        self.backend, self.kind, self.owner, self.clock = backend, kind, owner, clock
        self.policy = policy or LockPolicy()
        self.alive = alive
        self.lock_id = secrets.token_hex(16)
        self._seq = 0
        self._files: list[str] = []  # written and not (yet) removed
        self._fresh_at: float | None = None  # time written into the newest stored file
        self._lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _write(self) -> None:
        t = self._now()
        rec = LockFile("", self.kind, self.lock_id, self._seq, t, self.policy.lifetime, self.owner)
        data = encode_lock(rec)
        name = hashlib.sha256(data).hexdigest()
        self.backend.save(Handle(FileType.LOCK, name), data)
        self._seq += 1
        self._files.append(name)
        self._fresh_at = t

    def take(self) -> RepoLock:
        """Write the lock, then look at the others; ``LockedError`` (lock released) on conflict."""
        try:
            self._write()
        except PermissionDenied as exc:
            raise PermissionDenied(f"the storage refused to record this {self.kind}'s lock ({exc.message}); "
                                   "without it a prune could delete data a backup relies on",
                                   hint="the credential needs the right to create files under locks/") from exc
        try:
            self._check_others()
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name=f"rempart-{self.kind}-lock", daemon=True)
        self._thread.start()
        return self

    def _check_others(self) -> None:
        now = self._now()
        table = read_locks(self.backend, now, self.owner, self.alive)
        doing = "a backup cannot start" if self.kind == BACKUP else "pruning could delete data a backup needs"
        if table.corrupt:
            raise corrupt_error(table, f"{doing}; nothing was changed")
        others = [s for s in table.locks if s.live and s.lock_id != self.lock_id
                  and (self.kind == PRUNE or s.kind == PRUNE)]
        if not others:
            return
        first = others[0]
        if self.kind == BACKUP:
            raise LockedError(f"a prune is running on this repository ({first.describe(now, self.owner)}); "
                              "the backup did not start", hint="run the backup again when the prune has finished")
        what = "a backup is writing to" if first.kind == BACKUP else "another prune is running on"
        raise LockedError(
            f"{what} this repository ({first.describe(now, self.owner)}"
            + (f", and {len(others) - 1} more lock(s)" if len(others) > 1 else "")
            + f"); {doing}, so nothing was removed",
            hint="run it again when the backup has finished. A lock no longer refreshed expires after its "
                 "lifetime; 'rempart unlock' removes expired locks ('--remove-all' every lock: only if "
                 "you are sure nothing runs)")

    def refresh(self) -> None:
        """Write a newer lock file (and remove the previous one if the storage lets us)."""
        with self._mutex:
            if self._lost is not None:
                return
            self._note_gap()
            if self._lost is not None:
                return
            old = self._files[-1] if self._files else None
            try:
                self._write()
            except BackendError:
                return  # tried again next time; check() fails once the gap is too long
            if old is not None and self._remove(old):
                self._files.remove(old)

    def _note_gap(self) -> None:
        gap = self._now() - (self._fresh_at or 0.0)
        if gap > self.policy.give_up_after:
            self._lost = (f"this {self.kind}'s repository lock was not refreshed for {gap:.0f} s (more than "
                          f"{self.policy.give_up_after:.0f} s: the process was paused or the storage "
                          "unreachable), so a prune elsewhere may have treated it as expired")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.policy.refresh_every):
            self.refresh()

    def check(self) -> None:
        """Raise ``LockedError`` unless the lock has stayed fresh the whole time it was held."""
        with self._mutex:
            if self._fresh_at is None:
                raise LockedError(f"this {self.kind} holds no repository lock")
            self._note_gap()
            lost = self._lost
        if lost is not None:
            tail = ("nothing was committed; run the backup again (it re-reads what it needs)"
                    if self.kind == BACKUP else "it stopped before deleting anything more; run it again")
            raise LockedError(f"{lost}; {tail}")

    def verify(self) -> None:
        """``check``, then read the locks: ours must still be stored and not released (someone
        ran ``unlock --remove-all`` or forged a release record: a prune may have run)."""
        self.check()
        with self._mutex:
            newest = self._files[-1] if self._files else None
            table = read_locks(self.backend, self._now(), self.owner, self.alive)
        mine = next((s for s in table.locks if s.lock_id == self.lock_id), None)
        if mine is None or newest not in mine.files or mine.state == "released":
            raise LockedError(f"this {self.kind}'s repository lock was removed or released by another process "
                              "(rempart unlock --remove-all?), so a prune may have run; nothing was committed; "
                              "run the backup again")

    def _remove(self, name: str) -> bool:
        try:
            self.backend.remove(Handle(FileType.LOCK, name))
        except NotFound:
            return True
        except BackendError:
            return False
        return True

    def release(self) -> None:
        """Stop refreshing; remove our files, or record the release where the storage refuses."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            self._files = [n for n in self._files if not self._remove(n)]
            if not self._files:
                return
            rec = LockFile("", RELEASE, secrets.token_hex(16), 0, self._now(), self.policy.lifetime,
                           self.owner, target=self.lock_id)
            data = encode_lock(rec)
            try:
                self.backend.save(Handle(FileType.LOCK, hashlib.sha256(data).hexdigest()), data)
            except BackendError:
                pass  # the lock goes stale after its lifetime instead
            self._files = []

    def guard(self, backend: Backend) -> Backend:
        """``backend`` whose every pack and index file write first calls ``check`` and every
        snapshot write ``verify``: a holder resumed after its lock expired, or whose lock was
        removed, stores nothing more (a prune may have run)."""
        return _Guarded(backend, self.check, self.verify)

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Guarded(Wrapper):
    """A backend whose writes of repository data wait on a check (other calls pass through)."""

    def __init__(self, inner: Backend, check: Callable[[], None], verify: Callable[[], None]) -> None:
        super().__init__(inner)
        self._check, self._verify = check, verify

    def save(self, h: Handle, data: bytes) -> None:
        if h.type is FileType.SNAPSHOT:
            self._verify()
        elif h.type in (FileType.DATA, FileType.INDEX):
            self._check()
        self.inner.save(h, data)

    def __getattr__(self, name: str) -> Any:  # a backend's extras (file_path, ...)
        return getattr(self.inner, name)


class NoLock:
    """What a vault repository gets: the vault collects garbage itself, under its own lock."""

    def check(self) -> None:
        pass

    def guard(self, backend: Backend) -> Backend:
        return backend

    def release(self) -> None:
        pass


def keeps_locks(backend: Backend) -> bool:
    """A repository opened directly (folder, S3) keeps lock files; a vault does not."""
    return not backend.properties.location.lower().startswith(("https://", "http://"))


def take_backup_lock(backend: Backend, repo_id: str, clock: Clock,
                     policy: LockPolicy | None = None) -> RepoLock | NoLock:
    """The shared lock a backup holds from before it reads the index until its snapshot is stored."""
    if not keeps_locks(backend):
        return NoLock()
    return RepoLock(backend, BACKUP, Owner.current(repo_id), clock, policy).take()

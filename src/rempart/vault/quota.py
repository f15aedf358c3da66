"""Per-practice storage quotas that concurrent uploads cannot overshoot.

An upload is checked against the quota before it is stored and recorded in the database only
once stored (``Vault.ingest``). Checking the recorded ``used_bytes`` alone let two uploads that
arrive together both pass: each saw the other's bytes as not yet used. So each upload that
passes *claims* its size: :meth:`QuotaClaims.claim` checks ``used + claimed + size <= quota``
against a fresh read of the practice, under a lock of that practice, and adds ``size`` to what
is claimed. The upload's record is then committed under the same lock, and the claim dropped
in that same hold (``with claim:``): another upload never counts those bytes twice
(once recorded, once claimed) nor misses them. A refused or failed upload drops its claim.
An object that ``used_bytes`` still counts (a pack GC marked "deleting", uploaded again)
claims nothing: recording it adds nothing.

Claims live in this vault process's memory: a crash loses them along with the uploads they
were for, so nothing drifts. Several vault processes sharing one PostgreSQL database do not
see each other's claims; the final check inside the recording transaction (``Vault.ingest``)
then refuses an upload that would overshoot, after it was stored (it stays unrecorded and
invisible, as if the vault had been killed before recording it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import QuotaExceeded
from rempart.vault import db


def over_quota(name: str, used: int, quota: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"practice {name} is over its storage quota ({used} of {quota} bytes used); nothing was deleted",
        hint="ask the backup provider to raise the quota",
    )


def usage(conn: Connection, pid: int) -> tuple[int, int]:
    """(used_bytes, quota_bytes) of practice ``pid`` as ``conn`` sees them (quota 0: none)."""
    row = conn.execute(sa.select(db.practices.c.used_bytes, db.practices.c.quota_bytes)
                       .where(db.practices.c.id == pid)).one()
    return int(row.used_bytes or 0), int(row.quota_bytes or 0)


class Claim:
    """``size`` bytes claimed for one upload of practice ``pid``. ``with claim: <commit the
    record>`` holds the practice's lock while the record is committed and drops the claim with
    it if the commit succeeded; :meth:`release` drops it otherwise."""

    def __init__(self, claims: QuotaClaims, pid: int, size: int, lock: threading.Lock) -> None:
        self._claims, self._pid, self._size, self._lock = claims, pid, size, lock
        self._open = True

    def __enter__(self) -> Claim:
        self._lock.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._drop()
        finally:
            self._lock.release()

    def release(self) -> None:
        """Drop the claim if still open (the upload failed or was refused; idempotent)."""
        if self._open:
            with self._lock:
                self._drop()

    def _drop(self) -> None:
        if self._open:
            self._open = False
            self._claims._sub(self._pid, self._size)


class QuotaClaims:
    """Bytes claimed by uploads that passed the quota check and are not recorded yet."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._claimed: dict[int, int] = {}

    def _lock(self, pid: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(pid, threading.Lock())

    def claim(self, pid: int, name: str, size: int, fresh: Callable[[], tuple[int, int]]) -> Claim:
        """Claim ``size`` bytes for practice ``pid`` or raise QuotaExceeded; ``fresh()`` reads
        its (used_bytes, quota_bytes) from the database now (quota 0: unlimited)."""
        lock = self._lock(pid)
        with lock:
            used, quota = fresh()
            held = self._claimed.get(pid, 0)
            if quota and used + held + size > quota:
                raise over_quota(name, used, quota)
            self._claimed[pid] = held + size
        return Claim(self, pid, size, lock)

    def claimed(self, pid: int) -> int:
        with self._lock(pid):
            return self._claimed.get(pid, 0)

    def _sub(self, pid: int, size: int) -> None:
        left = self._claimed.get(pid, 0) - size
        if left > 0:
            self._claimed[pid] = left
        else:
            self._claimed.pop(pid, None)

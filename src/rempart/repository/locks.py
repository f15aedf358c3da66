"""Repository locks: a prune never deletes a pack that a running backup may reference.

A backup deduplicates against the index it read at start and uploads packs that no snapshot
references until its own snapshot is written; ``rempart forget --prune`` deletes every pack no
snapshot references. The two must not overlap, on storage that may only *create* files (the
agent's credential may have no delete right at all, and S3 Object Lock refuses deletes to
everyone). restic's scheme, adapted to that:

* A lock is a plain JSON file ``locks/<sha256 of the file>``: kind (``backup`` shared,
  ``prune`` exclusive), a random lock id, a sequence number, the holder's clock time, its
  lifetime (seconds), an opaque host id (hash of repository id and host name, as in snapshots),
  an opaque machine id (boot and process namespace) and the process id. No name, no path.
* **Take:** write the lock file first, *then* list every lock. A backup gives up if a fresh
  prune lock exists; a prune gives up if any other fresh lock exists. Whichever of two
  concurrent takers lists second sees the first one's file, so they never both proceed.
* **Refresh:** storage is create-only, so a refresh writes a *new* file (same lock id, next
  sequence number, new time), every lifetime/6, and removes the previous one if it may.
* **Stale:** a lock whose newest file is older than its lifetime (by the reader's clock), or
  whose holder ran on this same machine (same host id and machine id) and is gone, protects
  nothing. A holder that could not refresh for lifetime/2 (paused, suspended, storage down)
  **must** stop before it commits (backup) or deletes (prune): ``check`` raises. The margin
  between lifetime/2 and lifetime absorbs a clock difference of up to lifetime/2 between hosts.
* **Release:** the holder removes its files; where the storage refuses, it writes a release
  record (a lock file of kind ``release`` naming the lock id) instead. A holder killed before
  that leaves a lock that goes stale; ``rempart unlock`` removes stale and released locks
  (``--remove-all``: every lock, for an operator who knows nothing runs).
* A lock file that cannot be read or does not verify blocks both kinds, with a clear error
  naming it: its holder and age are unknown.

A vault repository is collected by the vault itself (under its database lock, with a grace
period): it stores no lock files and none are taken there.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rempart.core.clock import from_iso, to_iso
from rempart.core.errors import (
    ConfigError,
    LockedError,
    NotFound,
    PermissionDenied,
)
from rempart.storage.base import Backend, FileType, Handle

BACKUP, PRUNE, RELEASE = "backup", "prune", "release"
KINDS = (BACKUP, PRUNE, RELEASE)
MAX_LOCK_BYTES = 4096
MIN_LIFETIME, MAX_LIFETIME = 1.0, 86400.0
DEFAULT_LIFETIME = 1800.0  # restic's 30 minutes


@dataclass(frozen=True)
class LockPolicy:
    """How long a lock lives unrefreshed; refreshes every lifetime/6; the holder gives up at lifetime/2."""

    lifetime: float = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        if not MIN_LIFETIME <= self.lifetime <= MAX_LIFETIME:
            raise ConfigError(f"a lock lifetime must lie between {MIN_LIFETIME:.0f} and {MAX_LIFETIME:.0f} seconds")

    @property
    def refresh_every(self) -> float:
        return self.lifetime / 6

    @property
    def give_up_after(self) -> float:
        return self.lifetime / 2

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LockPolicy:
        """At the edge: ``REMPART_LOCK_LIFETIME`` (seconds), else the default."""
        text = env.get("REMPART_LOCK_LIFETIME", "").strip()
        if not text:
            return cls()
        try:
            return cls(float(text))
        except ValueError:
            raise ConfigError(f"REMPART_LOCK_LIFETIME must be a number of seconds, got {text[:20]!r}") from None


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, opaquely: enough to tell 'this machine, process gone', nothing more."""

    host: str
    machine: str | None
    pid: int

    @classmethod
    def current(cls, repo_id: str) -> Owner:
        """This process (called at the edge: reads the host name and /proc)."""
        host = hashlib.sha256(f"{repo_id}:{socket.gethostname()}".encode()).hexdigest()[:16]
        return cls(host, _machine_id(), os.getpid())


def _machine_id() -> str | None:
    """Boot id and pid namespace (Linux): two processes with equal ids see the same pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}:{ns}".encode()).hexdigest()[:16]


def process_alive(pid: int) -> bool:
    """Whether a process of this machine exists (unknown counts as alive)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@dataclass(frozen=True)
class LockFile:
    name: str
    kind: str
    lock_id: str
    seq: int
    time: float
    lifetime: float
    owner: Owner
    target: str | None = None  # release records: the lock id released


def encode_lock(rec: LockFile) -> bytes:
    obj: dict[str, Any] = {"v": 1, "kind": rec.kind, "id": rec.lock_id, "seq": rec.seq,
                           "time": to_iso(_utc(rec.time)),
                           "lifetime": rec.lifetime, "host": rec.owner.host, "machine": rec.owner.machine,
                           "pid": rec.owner.pid}
    if rec.target is not None:
        obj["target"] = rec.target
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class CorruptLock(ValueError):
    pass


def _hexid(v: object, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and all(c in "0123456789abcdef" for c in v)


def parse_lock(name: str, data: bytes) -> LockFile:
    """A lock file, checked field by field; ``CorruptLock`` says what is wrong."""
    if len(data) > MAX_LOCK_BYTES:
        raise CorruptLock(f"larger than {MAX_LOCK_BYTES} bytes")
    if hashlib.sha256(data).hexdigest() != name:
        raise CorruptLock("its content does not match its name")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptLock("not JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise CorruptLock("not a version 1 lock")
    kind, pid, seq, life = obj.get("kind"), obj.get("pid"), obj.get("seq"), obj.get("lifetime")
    machine = obj.get("machine")
    if kind not in KINDS:
        raise CorruptLock("unknown kind")
    if not _hexid(obj.get("id"), 32) or not _hexid(obj.get("host"), 16):
        raise CorruptLock("bad lock or host id")
    if machine is not None and not _hexid(machine, 16):
        raise CorruptLock("bad machine id")
    if type(pid) is not int or type(seq) is not int or not (0 <= pid < 2**31 and 0 <= seq < 2**31):
        raise CorruptLock("bad process id or sequence number")
    if isinstance(life, bool) or not isinstance(life, int | float) or not MIN_LIFETIME <= life <= MAX_LIFETIME:
        raise CorruptLock("bad lifetime")
    try:
        t = from_iso(str(obj.get("time"))[:64]).timestamp()
    except (ValueError, TypeError, OverflowError):
        raise CorruptLock("bad time") from None
    target = obj.get("target")
    if (kind == RELEASE) != (target is not None) or (target is not None and not _hexid(target, 32)):
        raise CorruptLock("bad release target")
    return LockFile(name, kind, obj["id"], seq, t, float(life), Owner(obj["host"], machine, pid), target)


@dataclass
class LockState:
    """One lock (all files of one lock id), as judged by a reader."""

    lock_id: str
    kind: str
    newest: LockFile
    started: float
    files: list[str] = field(default_factory=list)
    release_files: list[str] = field(default_factory=list)
    state: str = "fresh"  # fresh | stale | gone (holder exited on this machine) | released

    @property
    def live(self) -> bool:
        return self.state == "fresh"

    def describe(self, now: float, me: Owner) -> str:
        o = self.newest.owner
        where = f"this computer, pid {o.pid}" if o.host == me.host and o.machine == me.machine \
            else f"computer {o.host[:8]}, pid {o.pid}"
        age = now - self.newest.time
        when = f"last refreshed {max(0.0, age):.0f} s ago" if age > -60 else \
            f"dated {-age:.0f} s in the future: a wrong clock or a forged lock"
        return (f"{self.kind} lock {self.lock_id[:8]} ({self.state}) taken {to_iso(_utc(self.started))[:19]}Z "
                f"on {where}, {when}, lifetime {self.newest.lifetime:.0f} s")


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@dataclass
class LockTable:
    locks: list[LockState]
    #: lock files that cannot be read or do not verify: name -> why
    corrupt: dict[str, str]
    #: release records whose lock has no file left
    orphan_releases: list[str]


def read_locks(backend: Backend, now: float, me: Owner,
               alive: Callable[[int], bool] = process_alive) -> LockTable:
    """Every lock of the repository, judged at ``now`` from the view of ``me``."""
    files: list[LockFile] = []
    corrupt: dict[str, str] = {}
    try:
        listing = list(backend.list(FileType.LOCK))
    except NotFound:
        listing = []
    for fi in listing:
        if fi.size > MAX_LOCK_BYTES:
            corrupt[fi.name] = f"larger than {MAX_LOCK_BYTES} bytes"
            continue
        try:
            files.append(parse_lock(fi.name, backend.load(Handle(FileType.LOCK, fi.name))))
        except NotFound:
            continue  # released meanwhile
        except CorruptLock as exc:
            corrupt[fi.name] = str(exc)
    by_id: dict[str, LockState] = {}
    releases: dict[str, list[str]] = {}
    for f in files:
        if f.kind == RELEASE:
            releases.setdefault(f.target or "", []).append(f.name)
            continue
        st = by_id.get(f.lock_id)
        if st is None:
            st = by_id[f.lock_id] = LockState(f.lock_id, f.kind, f, f.time)
        elif f.kind != st.kind:
            corrupt[f.name] = "its lock id is already used by a lock of another kind"
            continue
        st.files.append(f.name)
        st.started = min(st.started, f.time)
        if (f.seq, f.time) > (st.newest.seq, st.newest.time):
            st.newest = f
    for st in by_id.values():
        o = st.newest.owner
        if st.lock_id in releases:
            st.state, st.release_files = "released", releases[st.lock_id]
        elif me.machine is not None and o.machine == me.machine and o.host == me.host and not alive(o.pid):
            st.state = "gone"
        elif now - st.newest.time > st.newest.lifetime:
            st.state = "stale"
    orphans = [n for target, names in releases.items() if target not in by_id for n in names]
    return LockTable(sorted(by_id.values(), key=lambda s: s.started), corrupt, orphans)


def corrupt_error(table: LockTable, doing: str) -> LockedError:
    name, why = sorted(table.corrupt.items())[0]
    return LockedError(f"lock file locks/{name[:16]}... cannot be used ({why}); its holder is unknown, so "
                       f"{doing}", hint=f"{len(table.corrupt)} such file(s). If no backup and no prune is "
                       "running on any computer, remove them: rempart unlock --remove-all")


@dataclass
class Unlocked:
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    remaining: list[LockState] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)


def remove_locks(backend: Backend, now: float, me: Owner, *, remove_all: bool = False,
                 keep: str | None = None, alive: Callable[[int], bool] = process_alive) -> Unlocked:
    """Remove the files of stale, gone and released locks and orphan release records (with
    ``remove_all``: of every lock, and the corrupt files). ``keep``: a lock id never touched."""
    table = read_locks(backend, now, me, alive)
    out = Unlocked()
    doomed: list[str] = list(table.orphan_releases)
    for st in table.locks:
        if st.lock_id == keep:
            continue
        if st.live and not remove_all:
            out.remaining.append(st)
            continue
        doomed += st.files  # the lock's own files first, then what released it
        doomed += st.release_files
    if remove_all:
        doomed += sorted(table.corrupt)
    else:
        out.corrupt = table.corrupt
    for name in doomed:
        try:
            backend.remove(Handle(FileType.LOCK, name))
        except NotFound:
            pass
        except PermissionDenied:
            out.refused.append(name)
            continue
        out.removed.append(name)
    return out

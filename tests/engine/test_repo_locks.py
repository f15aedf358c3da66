"""Repository locks at library level: the lock file format against hostile content, expiry by
lifetime (a moved clock, as between two computers), the take rules, a credential that may not
delete, the refresh thread, and real S3 (SeaweedFS) with and without Object Lock."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rempart.core.clock import FakeClock, SystemClock
from rempart.core.errors import ConfigError, LockedError, PermissionDenied
from rempart.repository.lock_holder import NoLock, RepoLock, take_backup_lock
from rempart.repository.locks import (
    BACKUP,
    PRUNE,
    RELEASE,
    CorruptLock,
    LockFile,
    LockPolicy,
    Owner,
    encode_lock,
    parse_lock,
    read_locks,
    remove_locks,
)
from rempart.storage.base import FileType, Handle, Permissions
from rempart.storage.local import LocalBackend
from rempart.storage.s3 import S3Backend, S3Config
from rempart.storage.wrappers import PermissionedBackend
from rempart.testing.servers import S3Server, locked_bucket

HERE = Owner("11" * 8, "22" * 8, 100)      # the prune's computer
THERE = Owner("33" * 8, "44" * 8, 200)     # a practice PC
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def valid(**change: Any) -> tuple[str, bytes]:
    rec = LockFile("", BACKUP, "ab" * 16, 0, T0.timestamp(), 1800.0, THERE)
    obj = json.loads(encode_lock(rec)) | change
    obj = {k: v for k, v in obj.items() if v is not ...}
    data = json.dumps(obj).encode()
    return hashlib.sha256(data).hexdigest(), data


BAD: dict[str, tuple[str, bytes]] = {
    "not json": ("", b"\xff\xfe garbage"),
    "not an object": ("", b"[1, 2]"),
    "version 2": valid(v=2),
    "unknown kind": valid(kind="admin"),
    "short id": valid(id="ab"),
    "upper-case host": valid(host="AB" * 8),
    "machine a number": valid(machine=5),
    "negative pid": valid(pid=-1),
    "pid a bool": valid(pid=True),
    "huge sequence": valid(seq=2**40),
    "lifetime zero": valid(lifetime=0),
    "lifetime a year": valid(lifetime=365 * 86400),
    "lifetime a string": valid(lifetime="1800"),
    "lifetime NaN": ("", b""),  # filled below: json.dumps writes NaN
    "lifetime missing": valid(lifetime=...),
    "time not a time": valid(time="yesterday"),
    "time a number": valid(time=12),
    "release without target": valid(kind="release"),
    "backup with a target": valid(target="cd" * 16),
    "too large": valid(pad="x" * 5000),
}
BAD["lifetime NaN"] = valid(lifetime=float("nan"))
BAD["not json"] = (hashlib.sha256(BAD["not json"][1]).hexdigest(), BAD["not json"][1])
BAD["not an object"] = (hashlib.sha256(b"[1, 2]").hexdigest(), b"[1, 2]")


def test_a_lock_file_round_trips_and_hostile_ones_are_refused_with_a_reason() -> None:
    name, data = valid()
    rec = parse_lock(name, data)
    assert (rec.kind, rec.lock_id, rec.time, rec.lifetime, rec.owner) == (BACKUP, "ab" * 16, T0.timestamp(),
                                                                          1800.0, THERE)
    with pytest.raises(CorruptLock, match="does not match its name"):
        parse_lock("00" * 32, data)
    for what, (name, data) in BAD.items():
        with pytest.raises(CorruptLock) as exc:
            parse_lock(name, data)
        assert str(exc.value), what


def test_the_lifetime_setting_is_checked_at_the_edge() -> None:
    assert LockPolicy.from_env({}).lifetime == 1800
    assert LockPolicy.from_env({"REMPART_LOCK_LIFETIME": "60"}).refresh_every == 10
    for bad in ("soon", "0", "1e9", "nan"):
        with pytest.raises(ConfigError):
            LockPolicy.from_env({"REMPART_LOCK_LIFETIME": bad})


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "repo", create=True)


def lock_files(b: Any) -> set[str]:
    return {fi.name for fi in b.list(FileType.LOCK)}


def test_take_rules_backups_share_a_prune_excludes_and_a_refused_taker_leaves_nothing(backend: LocalBackend) -> None:
    clock = FakeClock(T0)
    b1 = RepoLock(backend, BACKUP, THERE, clock).take()
    b2 = RepoLock(backend, BACKUP, HERE, clock).take()  # two backups at once: fine
    files = lock_files(backend)
    with pytest.raises(LockedError, match=r"a backup is writing to this repository \(backup lock .* on computer 3333"):
        RepoLock(backend, PRUNE, HERE, clock).take()
    assert lock_files(backend) == files  # the refused prune removed its own file
    b1.release()
    b2.release()
    assert lock_files(backend) == set()
    p1 = RepoLock(backend, PRUNE, HERE, clock).take()
    with pytest.raises(LockedError, match=r"a prune is running on this repository .* the backup did not start"):
        RepoLock(backend, BACKUP, THERE, clock).take()
    with pytest.raises(LockedError, match="another prune is running"):
        RepoLock(backend, PRUNE, THERE, clock).take()
    assert len(lock_files(backend)) == 1
    p1.release()
    assert lock_files(backend) == set()


def test_a_lock_expires_after_its_lifetime_and_its_holder_stops_before_that(backend: LocalBackend) -> None:
    clock = FakeClock(T0)
    backup = RepoLock(backend, BACKUP, THERE, clock, LockPolicy(600)).take()
    clock.advance(299)  # not refreshed (its thread waits 100 s of real time): still usable
    backup.check()
    clock.advance(2)  # 301 s > lifetime/2: the holder gives up, though a prune would still wait
    with pytest.raises(LockedError, match=r"was not refreshed for 301 s .* nothing was committed"):
        backup.check()
    guarded = backup.guard(backend)
    with pytest.raises(LockedError):
        guarded.save(Handle(FileType.DATA, "ee" * 32), b"pack")
    assert not list(backend.list(FileType.DATA))  # nothing stored
    with pytest.raises(LockedError, match="computer 3333"):
        RepoLock(backend, PRUNE, HERE, clock).take()
    clock.advance(300)  # 601 s > 600: expired for everybody
    table = read_locks(backend, clock.now().timestamp(), HERE)
    assert [s.state for s in table.locks] == ["stale"]
    prune = RepoLock(backend, PRUNE, HERE, clock).take()
    gone = remove_locks(backend, clock.now().timestamp(), HERE, keep=prune.lock_id)
    assert len(gone.removed) == 1 and not gone.remaining
    backup.release()
    prune.release()
    assert lock_files(backend) == set()


def test_a_backup_whose_lock_was_removed_or_released_by_another_process_does_not_commit(
        backend: LocalBackend) -> None:
    clock = FakeClock(T0)
    snap = Handle(FileType.SNAPSHOT, "5a" * 32)
    for tamper in ("remove", "release"):
        lock = RepoLock(backend, BACKUP, THERE, clock).take()
        guarded = lock.guard(backend)
        guarded.save(Handle(FileType.INDEX, f"{len(tamper):02x}" * 32), b"index")  # still fine
        if tamper == "remove":  # rempart unlock --remove-all on another computer
            assert remove_locks(backend, clock.now().timestamp(), HERE, remove_all=True).removed
        else:  # a forged release record
            data = encode_lock(LockFile("", RELEASE, "77" * 16, 0, T0.timestamp(), 60.0, HERE, lock.lock_id))
            backend.save(Handle(FileType.LOCK, hashlib.sha256(data).hexdigest()), data)
        assert [s.state for s in read_locks(backend, clock.now().timestamp(), HERE).locks] in ([], ["released"])
        with pytest.raises(LockedError, match="removed or released by another process"):
            guarded.save(snap, b"snapshot")
        assert not list(backend.list(FileType.SNAPSHOT))
        lock.release()
        remove_locks(backend, clock.now().timestamp(), HERE, remove_all=True)
    lock = RepoLock(backend, BACKUP, THERE, clock).take()
    lock.guard(backend).save(snap, b"snapshot")  # untouched: committed
    lock.release()
    assert [fi.name for fi in backend.list(FileType.SNAPSHOT)] == [snap.name]


def test_a_lock_of_a_process_gone_from_this_computer_is_not_live(backend: LocalBackend) -> None:
    clock = FakeClock(T0)
    RepoLock(backend, BACKUP, Owner(HERE.host, HERE.machine, 4242), clock).take()  # never released: killed
    RepoLock(backend, BACKUP, Owner(THERE.host, HERE.machine, 4243), clock).take()  # same pids, other host
    table = read_locks(backend, clock.now().timestamp(), HERE, alive=lambda pid: True)
    assert sorted(s.state for s in table.locks) == ["fresh", "fresh"]
    table = read_locks(backend, clock.now().timestamp(), HERE, alive=lambda pid: False)
    assert sorted(s.state for s in table.locks) == ["fresh", "gone"]  # the other host's pid says nothing


def test_a_credential_that_may_not_delete_records_its_release(backend: LocalBackend) -> None:
    clock = FakeClock(T0)
    agent = PermissionedBackend(backend, Permissions({t: "lrw" for t in FileType}))
    lock = RepoLock(agent, BACKUP, THERE, clock, LockPolicy(60)).take()
    for _ in range(2):
        clock.advance(10)
        lock.refresh()  # a new file each time; the old one cannot be removed
    assert len(lock_files(backend)) == 3
    lock.check()
    lock.release()
    assert len(lock_files(backend)) == 4  # and a release record
    table = read_locks(backend, clock.now().timestamp(), HERE)
    assert [(s.kind, s.state) for s in table.locks] == [(BACKUP, "released")]
    prune = RepoLock(backend, PRUNE, HERE, clock).take()  # not blocked
    out = remove_locks(backend, clock.now().timestamp(), HERE, keep=prune.lock_id)
    assert len(out.removed) == 4 and not out.refused
    prune.release()
    assert lock_files(backend) == set()

    blind = PermissionedBackend(backend, Permissions({t: "lr" for t in FileType}))
    with pytest.raises(PermissionDenied, match="refused to record this backup's lock"):
        RepoLock(blind, BACKUP, THERE, clock).take()


def test_the_refresh_thread_keeps_a_long_run_live(backend: LocalBackend) -> None:
    lock = RepoLock(backend, BACKUP, THERE, SystemClock(), LockPolicy(1.5)).take()  # refreshes every 0.25 s
    try:
        time.sleep(2.5)  # longer than the lifetime
        lock.check()
        with pytest.raises(LockedError, match="a backup is writing"):
            RepoLock(backend, PRUNE, HERE, SystemClock()).take()
        assert len(lock_files(backend)) == 1  # each refresh removed the file before it
    finally:
        lock.release()
    assert lock_files(backend) == set()


def test_no_lock_is_taken_on_a_vault(backend: LocalBackend) -> None:
    class Vaultish(LocalBackend):
        pass

    v = Vaultish(backend.root)
    v.properties = type(v.properties)(location="https://vault.example:8443/practice")
    lock = take_backup_lock(v, "00" * 32, FakeClock(T0))
    assert isinstance(lock, NoLock) and lock.guard(v) is v and lock_files(backend) == set()


# --- real S3 ------------------------------------------------------------------------------------


def test_locks_on_s3_and_under_object_lock(seaweed: S3Server) -> None:
    clock = FakeClock(datetime.now(UTC))
    prefix = f"locks/{uuid.uuid4().hex}"
    plain = S3Backend(S3Config(seaweed.endpoint, locked_bucket(seaweed), prefix, seaweed.admin.access_key,
                               seaweed.admin.secret_key, seaweed.region))
    backup = RepoLock(plain, BACKUP, THERE, clock).take()
    with pytest.raises(LockedError, match="a backup is writing"):
        RepoLock(plain, PRUNE, HERE, clock).take()
    backup.release()
    assert lock_files(plain) == set()
    prune = RepoLock(plain, PRUNE, HERE, clock).take()
    with pytest.raises(LockedError, match="a prune is running"):
        RepoLock(plain, BACKUP, THERE, clock).take()
    prune.release()
    assert lock_files(plain) == set()

    # under Object Lock (COMPLIANCE) nobody may delete a lock file: releases are recorded
    prefix = f"locks-retained/{uuid.uuid4().hex}"
    agent = S3Backend(S3Config(seaweed.endpoint, seaweed.client_bucket, prefix, seaweed.client.access_key,
                               seaweed.client.secret_key, seaweed.region, object_lock_days=1), clock=clock)
    provider = S3Backend(S3Config(seaweed.endpoint, seaweed.client_bucket, prefix, seaweed.admin.access_key,
                                  seaweed.admin.secret_key, seaweed.region))
    backup = RepoLock(agent, BACKUP, THERE, clock).take()
    with pytest.raises(LockedError, match="a backup is writing"):
        RepoLock(provider, PRUNE, HERE, clock).take()
    backup.release()
    assert len(lock_files(provider)) == 2  # the lock and its release record
    prune = RepoLock(provider, PRUNE, HERE, clock).take()
    out = remove_locks(provider, clock.now().timestamp(), HERE, keep=prune.lock_id)
    assert out.removed == [] and len(out.refused) == 2
    prune.release()
    clock.advance(60)
    RepoLock(agent, BACKUP, THERE, clock).take().release()  # nothing left blocks a backup
    table = read_locks(provider, clock.now().timestamp(), HERE)
    assert {s.state for s in table.locks} == {"released"} and not table.corrupt

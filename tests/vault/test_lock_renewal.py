"""GC renews the S3 Object Lock of what the vault keeps, frozen or not, and lets the rest lapse.

In-process vault (service layer, SQLite) on a real SeaweedFS bucket with Object Lock. The
vault's clock is a FakeClock started at the real time and moved forward by hand; the lock dates
it writes are read back from the storage with a raw S3 client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rempart.core.clock import FakeClock
from rempart.core.errors import ConfigError
from rempart.storage.base import FileType, Handle
from rempart.testing.servers import s3_client
from rempart.vault import db, gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import RetentionPolicy, parse_config
from rempart.vault.lockrenew import renew_locks

from .objects import make_config, make_pack, make_snapshot

HOUR = 3600.0
LOCK_DAYS = 2


def s3_section(seaweed: Any, bucket: str, lock_days: int = LOCK_DAYS) -> dict[str, Any]:
    return {"kind": "s3", "endpoint": seaweed.endpoint, "bucket": bucket, "region": seaweed.region,
            "access_key": seaweed.admin.access_key, "secret_key": seaweed.admin.secret_key, "lock_days": lock_days}


def retain_until(raw: Any, bucket: str, key: str) -> datetime:
    """The retain-until date of the key's first stored (accepted) version, read from the storage
    (S3 lists a key's versions newest first)."""
    versions = raw.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    oldest = [v for v in versions if v["Key"] == key][-1]
    r = raw.get_object_retention(Bucket=bucket, Key=key, VersionId=oldest["VersionId"])
    assert r["Retention"]["Mode"] == "COMPLIANCE"
    return r["Retention"]["RetainUntilDate"]


@pytest.mark.slow
def test_gc_renews_the_lock_of_kept_objects_also_under_freeze(seaweed: Any, tmp_path: Path) -> None:
    bucket = f"vault-{uuid.uuid4().hex[:10]}"
    t0 = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(t0)
    v = open_vault(parse_config({"tls": {"enabled": False}, "storage": s3_section(seaweed, bucket),
                                 "retention": {"min_age_days": 1}, "gc": {"grace_seconds": HOUR, "interval_seconds": HOUR}}, tmp_path), clock)
    v.store.prepare()
    raw: Any = s3_client(seaweed, seaweed.admin)
    ops.add_practice(v, "doc", actor="t")
    ops.set_policy(v, "doc", RetentionPolicy(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0,
                                             min_age_days=1), actor="t")
    p = v.practice("doc")
    kept, ids = make_pack([1000, 2000])
    orphan, _ = make_pack([300])  # referenced by no snapshot: GC marks it and lets its lock lapse
    snap = make_snapshot(ids)
    for h, data in ((Handle(FileType.CONFIG, "config"), make_config()),
                    (Handle(FileType.DATA, kept.name), kept.data),
                    (Handle(FileType.DATA, orphan.name), orphan.data),
                    (Handle(FileType.SNAPSHOT, snap.name), snap.data)):
        v.ingest("t", p, h, data)
    keys = {"config": "doc/config", "kept": f"doc/data/{kept.name}", "orphan": f"doc/data/{orphan.name}",
            "snap": f"doc/snapshots/{snap.name}"}
    lock = timedelta(days=LOCK_DAYS)
    for k in keys.values():
        assert abs(retain_until(raw, bucket, k) - (t0 + lock)) < timedelta(seconds=5)

    # first pass: every object is looked at once; two days left, nothing is due
    rep = gc.run_gc(v, v.practice("doc"), actor="t")
    assert rep.renewed_locks == 0 and rep.deleted_packs == []
    with v.engine.connect() as conn:
        dates = dict(conn.execute(sa.select(db.objects.c.name, db.objects.c.locked_until)
                                  .where(db.objects.c.practice_id == p.id)).all())
    assert all(d is not None and abs(d - (t0 + lock).timestamp()) < 5 for d in dates.values()), dates
    # ...and the next pass asks the storage about nothing
    assert renew_locks(v, v.practice("doc"), actor="t").checked == 0

    # a stolen credential puts a newer version over the kept pack: it must change nothing below
    raw.put_object(Bucket=bucket, Key=keys["kept"], Body=b"ransom")

    # 36 hours on: 12 hours of lock left, less than half. The kept objects are renewed to now +
    # two days; the orphan is marked for deletion (the storage refuses: still locked) and keeps its date
    clock.advance(36 * HOUR)
    rep = gc.run_gc(v, v.practice("doc"), actor="t")
    t1 = clock.now()
    assert rep.renewed_locks == 3
    assert rep.retained_by_storage == [orphan.name]
    for k in ("config", "kept", "snap"):
        assert abs(retain_until(raw, bucket, keys[k]) - (t1 + lock)) < timedelta(seconds=5), k
    assert abs(retain_until(raw, bucket, keys["orphan"]) - (t0 + lock)) < timedelta(seconds=5)
    # the index GC wrote in that pass carries its own fresh lock and was not due
    (idx,) = v.list_files(v.practice("doc"), FileType.INDEX)
    assert abs(retain_until(raw, bucket, f"doc/index/{idx.name}") - (t1 + lock)) < timedelta(seconds=5)

    # under an incident freeze GC deletes nothing, and still renews every kept object
    ops.freeze(v, "doc", True, "test", actor="t")
    clock.advance(36 * HOUR)
    rep = gc.run_gc(v, v.practice("doc"), actor="t")
    t2 = clock.now()
    assert rep.frozen and rep.deleted_packs == []
    assert rep.renewed_locks == 4  # config, the kept pack, the snapshot and the index
    for k in ("config", "kept", "snap"):
        assert abs(retain_until(raw, bucket, keys[k]) - (t2 + lock)) < timedelta(seconds=5), k
    assert abs(retain_until(raw, bucket, keys["orphan"]) - (t0 + lock)) < timedelta(seconds=5)
    # a vault started afterwards still reads the accepted bytes of the renewed pack
    v.store.close()
    assert v.load(v.practice("doc"), Handle(FileType.DATA, kept.name)) == kept.data
    actions = [e["action"] for e in ops_audit(v)]
    assert actions.count("lock.renew") == 2
    v.store.close()


class FakeServer:  # only the settings parse_config reads; no server is contacted
    endpoint = "http://127.0.0.1:1"
    region = "us-east-1"
    admin = type("Creds", (), {"access_key": "a", "secret_key": "s"})


def ops_audit(v: Any) -> list[dict[str, Any]]:
    with v.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(db.audit).order_by(db.audit.c.seq))]


def test_scheduled_gc_must_come_round_before_half_the_lock_has_gone(tmp_path: Path) -> None:
    seaweed = FakeServer()
    base = {"tls": {"enabled": False}, "retention": {"min_age_days": 1}}
    with pytest.raises(ConfigError, match="half of \\[storage\\] lock_days"):
        parse_config({**base, "storage": s3_section(seaweed, "b", lock_days=1)}, tmp_path)  # daily GC, 1-day lock
    ok = parse_config({**base, "storage": s3_section(seaweed, "b", lock_days=3)}, tmp_path)
    assert ok.gc_enabled
    # with scheduled GC off the provider runs `rempart vault gc` itself (documented)
    off = parse_config({**base, "storage": s3_section(seaweed, "b", lock_days=1), "gc": {"enabled": False}}, tmp_path)
    assert not off.gc_enabled

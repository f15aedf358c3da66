"""The vault's [replica]: every practice's objects copied to a second storage, checked against
their names, deletions following the vault's GC; by hand and in the scheduled pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rempart.core.clock import FakeClock
from rempart.core.errors import ConfigError
from rempart.storage.base import FileType, Handle
from rempart.vault import db, gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import RetentionPolicy, parse_config
from rempart.vault.replica import open_replica, replicate_practice

from .objects import make_config, make_pack, make_snapshot
from .test_gc_schedule import audit_actions, metric, scheduled_vault, wait_for

DAY = 86400.0


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in ("tmp", "locks")}


def test_replicate_copies_checks_and_follows_gc_deletions(tmp_path: Path) -> None:
    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 3600},
                                 "replica": {"kind": "local", "path": str(tmp_path / "site-b")}}, tmp_path), clock)
    ops.add_practice(v, "doc", actor="t")
    ops.set_policy(v, "doc", RetentionPolicy(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0,
                                             min_age_days=7), actor="t")
    p = v.practice("doc")
    v.ingest("t", p, Handle(FileType.CONFIG, "config"), make_config())
    a, ida = make_pack([1000])
    b, idb = make_pack([2000])
    s1, s2 = make_snapshot(ida), make_snapshot(idb)
    v.ingest("t", v.practice("doc"), Handle(FileType.DATA, a.name), a.data)
    v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s1.name), s1.data)
    clock.advance(DAY)
    v.ingest("t", v.practice("doc"), Handle(FileType.DATA, b.name), b.data)
    v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s2.name), s2.data)
    replica = open_replica(v)
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert (rep.copied, rep.present, rep.removed, rep.damaged) == (4, 0, 0, [])
    primary, copy = tmp_path / "storage" / "doc", tmp_path / "site-b" / "doc"
    assert files(copy) == files(primary)

    # a pack that rots in the vault's storage is reported and never copied
    c, _ = make_pack([3000])
    v.ingest("t", v.practice("doc"), Handle(FileType.DATA, c.name), c.data)
    rotten = next(primary.rglob(c.name))
    rotten.chmod(0o644)
    rotten.write_bytes(bytes([c.data[0] ^ 0xFF]) + c.data[1:])
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert rep.damaged == [f"data/{c.name}"] and rep.copied == 0 and rep.present == 4
    assert not list(copy.rglob(c.name))
    rotten.unlink()

    # GC forgets s1 and deletes pack a: the replica follows; an object the vault never knew stays
    stray, _ = make_pack([50])
    (copy / "data" / stray.name[:2]).mkdir(exist_ok=True)
    (copy / "data" / stray.name[:2] / stray.name).write_bytes(stray.data)
    clock.advance(8 * DAY)
    g = gc.run_gc(v, v.practice("doc"), actor="t")
    assert g.forgotten == [s1.name] and a.name in g.deleted_packs
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert rep.removed == 2 and rep.copied == 1  # a and s1 gone; GC's new index file copied
    assert not list(copy.rglob(a.name)) and not (copy / "snapshots" / s1.name).exists()
    assert (copy / "snapshots" / s2.name).read_bytes() == s2.data and list(copy.rglob(stray.name))
    with v.engine.connect() as conn:
        outcomes = [r.outcome for r in conn.execute(sa.select(db.audit.c.outcome).where(
            db.audit.c.action == "replicate").order_by(db.audit.c.seq))]
    assert outcomes == ["ok", "damaged", "ok"]


def test_replica_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a path"):
        parse_config({"replica": {"kind": "local"}}, tmp_path)
    with pytest.raises(ConfigError, match="another place"):
        parse_config({"storage": {"path": str(tmp_path / "s")}, "replica": {"path": str(tmp_path / "s")}}, tmp_path)
    with pytest.raises(ConfigError, match="needs endpoint and bucket"):
        parse_config({"replica": {"kind": "s3"}}, tmp_path)
    assert parse_config({}, tmp_path).replica is None


@pytest.mark.slow
def test_the_scheduled_pass_replicates_and_the_cli_too(tmp_path: Path) -> None:
    site_b = tmp_path / "site-b"
    v = scheduled_vault(tmp_path / "vault", f"interval_seconds = 1\njitter_seconds = 0\n"
                                            f"[replica]\nkind = \"local\"\npath = \"{site_b}\"")
    v.start()
    try:
        name, toks = v.add_practice()
        bk = v.backend(name, toks["backup"])
        pk, ids = make_pack([5000, 7000])
        bk.save(Handle(FileType.DATA, pk.name), pk.data)
        snap = make_snapshot(ids)
        bk.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
        bk.close()
        assert wait_for(lambda: (site_b / name / "snapshots" / snap.name).is_file()), v.log.read_text()[-3000:]
        assert next((site_b / name / "data").rglob(pk.name)).read_bytes() == pk.data
        assert wait_for(lambda: any(r["action"] == "replicate" and r["practice"] == name for r in audit_actions(
            v, "vault-gc")))
        assert metric(v, "rempart_vault_replica_bytes_total") >= len(pk.data) + len(snap.data)
    finally:
        v.stop()
    from .conftest import cli

    out = cli(v.cfg, "replicate", "--practice", name, "--json")
    (r,) = json.loads(out.stdout)
    assert r["copied"] == 0 and r["already_present"] == 2 and r["damaged"] == []
    fixed = cli(v.cfg, "repair", "--json")  # nothing damaged: nothing to put back
    assert json.loads(fixed.stdout) == [{"practice": name, "repaired": [], "failed": {}}]


def test_repair_puts_back_what_the_scrub_found_damaged_only_from_good_replica_bytes(tmp_path: Path) -> None:
    from rempart.vault.replica import repair_from_replica
    from rempart.vault.scrub import scrub_practice

    v = open_vault(parse_config({"tls": {"enabled": False},
                                 "replica": {"kind": "local", "path": str(tmp_path / "site-b")}}, tmp_path), FakeClock())
    ops.add_practice(v, "doc", actor="t")
    packs = [make_pack([1000 + i])[0] for i in range(3)]
    for pk in packs:
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    replica = open_replica(v)
    replicate_practice(v, replica, v.practice("doc"), actor="t")
    primary, copy = tmp_path / "storage" / "doc", tmp_path / "site-b" / "doc"
    good, bad_too, absent = packs
    for pk in packs:  # bit rot in the vault's storage
        f = next(primary.rglob(pk.name))
        f.chmod(0o644)
        f.write_bytes(pk.data[:-1] + bytes([pk.data[-1] ^ 1]))
    rot = next(copy.rglob(bad_too.name))
    rot.write_bytes(bytes([bad_too.data[0] ^ 0xFF]) + bad_too.data[1:])  # ...and in the replica too
    next(copy.rglob(absent.name)).unlink()
    assert len(scrub_practice(v, v.practice("doc")).damaged) == 3
    rep = repair_from_replica(v, replica, v.practice("doc"), actor="admin")
    assert rep.repaired == [f"data/{good.name}"]
    assert rep.failed == {f"data/{bad_too.name}": "damaged in the replica too",
                          f"data/{absent.name}": "not in the replica"}
    assert next(primary.rglob(good.name)).read_bytes() == good.data
    again = scrub_practice(v, v.practice("doc"))
    assert sorted(n for _, n, _ in again.damaged) == sorted([bad_too.name, absent.name])
    # put_back itself refuses bytes that do not hash to the name
    from rempart.core.errors import IntegrityError
    with pytest.raises(IntegrityError):
        v.backend(v.practice("doc")).put_back(Handle(FileType.DATA, absent.name), b"not the pack")


@pytest.mark.slow
def test_an_s3_replica_with_object_lock_keeps_what_its_lock_protects(seaweed: Any, tmp_path: Path) -> None:
    """A replica in a SeaweedFS bucket with Object Lock: objects land there under their own
    COMPLIANCE lock, and a deletion following the vault's GC is refused by the lock (kept, counted,
    retried at the next pass)."""
    import uuid
    from datetime import UTC, datetime

    from rempart.testing.servers import s3_client

    bucket = f"replica-{uuid.uuid4().hex[:10]}"
    clock = FakeClock(datetime.now(UTC))  # lock dates are checked against the storage's clock
    replica_cfg = {"kind": "s3", "endpoint": seaweed.endpoint, "bucket": bucket, "region": seaweed.region,
                   "access_key": seaweed.admin.access_key, "secret_key": seaweed.admin.secret_key, "lock_days": 1,
                   "location": "second site"}
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 0},
                                 "replica": replica_cfg}, tmp_path), clock)
    ops.add_practice(v, "doc", actor="t")
    ops.set_policy(v, "doc", RetentionPolicy(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0,
                                             min_age_days=0), actor="t")
    a, ida = make_pack([1000])
    b, idb = make_pack([2000])
    for pk in (a, b):
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    s1 = make_snapshot(ida)
    v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s1.name), s1.data)
    clock.advance(60)
    s2 = make_snapshot(idb)
    v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s2.name), s2.data)
    replica = open_replica(v)
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert rep.copied == 4 and rep.damaged == []
    raw: Any = s3_client(seaweed, seaweed.admin)
    head = raw.head_object(Bucket=bucket, Key=f"doc/data/{a.name}")
    assert head["ObjectLockMode"] == "COMPLIANCE" and raw.get_object(
        Bucket=bucket, Key=f"doc/data/{a.name}")["Body"].read() == a.data
    g = gc.run_gc(v, v.practice("doc"), actor="gc")  # keep_last=1: s1 and its pack go from the vault
    assert g.forgotten == [s1.name] and a.name in g.deleted_packs
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert rep.removed == 0 and rep.kept_by_lock == 2  # the replica's lock refuses, for now
    assert raw.get_object(Bucket=bucket, Key=f"doc/data/{a.name}")["Body"].read() == a.data
    assert v.config.data_location() == {"vault": None, "replica": "second site"}

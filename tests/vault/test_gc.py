"""Deterministic retention and GC scenarios (in-process service, FakeClock)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rempart.core.clock import FakeClock
from rempart.core.errors import MissingBlobs
from rempart.repository.format import parse_index
from rempart.storage.base import FileType, Handle
from rempart.vault import gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import RetentionPolicy, parse_config

from .objects import make_index, make_pack, make_snapshot

DAY = 86400.0


@pytest.fixture
def svc(tmp_path: Path) -> tuple[Any, FakeClock, str]:
    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 3600}}, tmp_path), clock)
    ops.add_practice(v, "doc", actor="t")
    ops.set_policy(v, "doc", RetentionPolicy(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0,
                                             min_age_days=7), actor="t")
    return v, clock, "doc"


def put(v: Any, name: str, h: Handle, data: bytes) -> None:
    v.ingest("t", v.practice(name), h, data)


def test_gc_deletes_only_unreferenced_packs_after_min_age_and_writes_index(svc: Any) -> None:
    v, clock, name = svc
    a, ida = make_pack([10, 10])
    b, idb = make_pack([20])
    put(v, name, Handle(FileType.DATA, a.name), a.data)
    put(v, name, Handle(FileType.DATA, b.name), b.data)
    idx = make_index([(a.name, ida, [10, 10]), (b.name, idb, [20])])
    put(v, name, Handle(FileType.INDEX, idx.name), idx.data)
    s1 = make_snapshot(ida)
    put(v, name, Handle(FileType.SNAPSHOT, s1.name), s1.data)
    clock.advance(DAY)
    s2 = make_snapshot(idb)
    put(v, name, Handle(FileType.SNAPSHOT, s2.name), s2.data)
    # younger than the minimum age: nothing goes
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.forgotten == [] and rep.deleted_packs == []
    clock.advance(8 * DAY)
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.forgotten == [s1.name]
    assert rep.deleted_packs == [a.name]
    p = v.practice(name)
    assert [f.name for f in v.list_files(p, FileType.DATA)] == [b.name]
    assert [f.name for f in v.list_files(p, FileType.SNAPSHOT)] == [s2.name]
    # clients now see one consolidated index naming only live packs
    idx_files = v.list_files(p, FileType.INDEX)
    assert [f.name for f in idx_files] == [rep.new_index]
    packs = [pid.hex() for pid, _ in parse_index(v.load(p, Handle(FileType.INDEX, rep.new_index)))]
    assert packs == [b.name]
    assert v.exists(p, ida) == set()
    assert not (v.config.storage.path / name / "data" / a.name[:2] / a.name).exists()
    assert p.used_bytes == len(b.data) + len(s2.data) + (v.stat(p, Handle(FileType.INDEX, rep.new_index)).size)
    # a snapshot still referencing the collected blobs is refused, not committed on missing data
    s3 = make_snapshot(ida)
    with pytest.raises(MissingBlobs):
        put(v, name, Handle(FileType.SNAPSHOT, s3.name), s3.data)


def test_freeze_stops_every_deletion_and_release_resumes(svc: Any) -> None:
    v, clock, name = svc
    a, ida = make_pack([10])
    put(v, name, Handle(FileType.DATA, a.name), a.data)
    s1 = make_snapshot(ida)
    put(v, name, Handle(FileType.SNAPSHOT, s1.name), s1.data)
    bad = make_snapshot(ida, verdict="suspicious")
    put(v, name, Handle(FileType.SNAPSHOT, bad.name), bad.data)
    assert v.practice(name).frozen
    clock.advance(30 * DAY)
    for _ in range(5):  # a flood of later garbage snapshots, each suspicious
        g, gid = make_pack([5])
        put(v, name, Handle(FileType.DATA, g.name), g.data)
        s = make_snapshot(gid, verdict="suspicious")
        put(v, name, Handle(FileType.SNAPSHOT, s.name), s.data)
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.frozen and rep.forgotten == [] and rep.deleted_packs == []
    ops.freeze(v, name, False, "incident handled", actor="admin")
    clock.advance(30 * DAY)
    rep = gc.run_gc(v, v.practice(name), actor="t")
    # suspicious ones never count towards keep_last=1: the clean s1 survives the flood
    kept = {f.name for f in v.list_files(v.practice(name), FileType.SNAPSHOT)}
    assert s1.name in kept and bad.name not in kept
    assert a.name not in rep.deleted_packs


def test_grace_period_keeps_packs_touched_by_exists(svc: Any) -> None:
    v, clock, name = svc
    a, ida = make_pack([10])
    put(v, name, Handle(FileType.DATA, a.name), a.data)  # unreferenced pack
    clock.advance(2 * 3600)
    assert v.exists(v.practice(name), ida) == set(ida)  # an agent dedups against it
    clock.advance(1800)
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.deleted_packs == []
    s = make_snapshot(ida)  # the agent's commit within the grace period succeeds
    put(v, name, Handle(FileType.SNAPSHOT, s.name), s.data)
    b, _ = make_pack([10])
    put(v, name, Handle(FileType.DATA, b.name), b.data)
    clock.advance(2 * 3600)
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.deleted_packs == [b.name]  # untouched, unreferenced, older than grace


def test_reupload_of_a_pack_marked_for_deletion_survives_the_sweep(svc: Any) -> None:
    v, clock, name = svc
    a, ida = make_pack([10])
    put(v, name, Handle(FileType.DATA, a.name), a.data)
    clock.advance(2 * 3600)
    rep = gc.GcReport(name)
    assert gc._mark(v, v.practice(name), actor="t", report=rep)
    assert v.exists(v.practice(name), ida) == set()  # marked: no longer offered for dedup
    put(v, name, Handle(FileType.DATA, a.name), a.data)  # an agent uploads the same pack again
    assert v.practice(name).used_bytes == len(a.data)  # counted once: it never stopped being stored
    gc._sweep(v, v.practice(name), ("deleting",), ("data",), rep)
    assert rep.deleted_packs == []
    p = v.practice(name)
    assert p.used_bytes == len(a.data)
    assert v.load(p, Handle(FileType.DATA, a.name)) == a.data
    assert v.exists(p, ida) == set(ida)
    s = make_snapshot(ida)
    put(v, name, Handle(FileType.SNAPSHOT, s.name), s.data)


def test_gc_removes_uploads_cut_short_long_ago_and_keeps_one_arriving(svc: Any) -> None:
    """A vault killed mid-upload leaves a half-written file in the practice's tmp/; the next GC
    pass removes it once untouched for the grace period, never one still being written."""
    from rempart.storage.local import TMP_GRACE

    v, clock, name = svc
    tmp = v.config.storage.path / name / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    now = clock.now().timestamp()
    stale, arriving = tmp / "ab.1.tmp", tmp / "cd.2.tmp"
    for p, age in ((stale, TMP_GRACE + 1), (arriving, 5.0)):
        p.write_bytes(b"part of a pack")
        os.utime(p, (now - age, now - age))
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.tmp_removed == 1
    assert not stale.exists() and arriving.exists()


def test_legal_hold_outlasts_retention_and_admin_deletion_until_released(svc: Any) -> None:
    from rempart.core.errors import NotFound, PermissionDenied, UserError

    v, clock, name = svc
    a, ida = make_pack([10])
    put(v, name, Handle(FileType.DATA, a.name), a.data)
    s1 = make_snapshot(ida)
    put(v, name, Handle(FileType.SNAPSHOT, s1.name), s1.data)
    with pytest.raises(UserError, match="needs a reason"):
        ops.set_hold(v, name, s1.name, True, "  ", actor="t")
    full = ops.find_snapshot(v, name, s1.name[:8].upper())
    assert full == s1.name
    with pytest.raises(NotFound):
        ops.find_snapshot(v, name, "0" * 8 if not s1.name.startswith("0" * 8) else "f" * 8)
    with pytest.raises(UserError, match="not a snapshot id"):
        ops.find_snapshot(v, name, "abc")
    ops.set_hold(v, name, full, True, "CNIL request 2026-114", actor="admin-1")
    clock.advance(DAY)
    b, idb = make_pack([20])
    put(v, name, Handle(FileType.DATA, b.name), b.data)
    s2 = make_snapshot(idb)
    put(v, name, Handle(FileType.SNAPSHOT, s2.name), s2.data)
    clock.advance(8 * DAY)
    # keep_last=1 would drop s1; the hold keeps it, and with it pack a
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.forgotten == [] and rep.deleted_packs == []
    with pytest.raises(PermissionDenied, match="legal hold"):
        ops.admin_remove(v, v.practice(name), Handle(FileType.SNAPSHOT, s1.name), actor="admin-1")
    assert [t["hold"] for t in ops.timeline(v, v.practice(name))] == [None, "CNIL request 2026-114"]
    # released: the policy applies again
    ops.set_hold(v, name, s1.name, False, "request closed", actor="admin-1")
    with pytest.raises(UserError, match="not under legal hold"):
        ops.set_hold(v, name, s1.name, False, "", actor="admin-1")
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.forgotten == [s1.name] and rep.deleted_packs == [a.name]
    with pytest.raises(UserError, match="already forgotten"):
        ops.set_hold(v, name, s1.name, True, "too late", actor="admin-1")
    entries = _audit(v)
    assert [(e["action"], e["actor"]) for e in entries] == [("snapshot.hold", "admin-1"),
                                                            ("snapshot.release-hold", "admin-1")]
    assert "CNIL request 2026-114" in entries[0]["detail"] and "request closed" in entries[1]["detail"]


def _audit(v: Any) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from rempart.vault import db

    with v.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(db.audit).where(
            db.audit.c.action.like("snapshot.%")).order_by(db.audit.c.seq))]

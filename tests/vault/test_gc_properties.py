"""Property tests: retention and GC never remove a blob that a kept snapshot references, also
when uploads, exists-calls and snapshot commits are interleaved between GC's phases; the grace
period protects blobs a client learned about through ``exists``; a freeze stops every deletion.

The vault runs in-process (service layer, SQLite, local storage, FakeClock); the HTTP layer is
covered by the real-process tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rempart.core.clock import FakeClock
from rempart.core.errors import MissingBlobs
from rempart.repository.format import parse_pack_header
from rempart.storage.base import FileType, Handle
from rempart.vault import db, gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import RetentionPolicy, parse_config
from rempart.vault.retention import SnapRecord, select_kept

from .objects import make_pack, make_snapshot

GRACE = 3600.0
_STATE: dict[str, Any] = {}


def shared_vault() -> tuple[Any, FakeClock]:
    if "vault" not in _STATE:
        d = Path(tempfile.mkdtemp(prefix="vault-prop-"))
        cfg = parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": GRACE}}, d)
        clock = FakeClock()
        _STATE["vault"] = open_vault(cfg, clock)
        _STATE["clock"] = clock
    return _STATE["vault"], _STATE["clock"]


op_st = st.one_of(
    st.tuples(st.just("pack"), st.integers(1, 3)),
    st.tuples(st.just("snap"), st.lists(st.integers(0, 40), min_size=1, max_size=5), st.booleans()),
    st.tuples(st.just("exists"), st.lists(st.integers(0, 40), min_size=1, max_size=5)),
    st.tuples(st.just("advance"), st.sampled_from([60, 1800, 3 * 3600, 26 * 3600])),
    st.tuples(st.just("gc")),
    st.tuples(st.just("freeze"), st.booleans()),
    st.tuples(st.just("hold"), st.integers(0, 40), st.booleans()),
)


class World:
    def __init__(self, vault: Any, clock: FakeClock) -> None:
        self.v, self.clock = vault, clock
        name = f"prop-{os.urandom(4).hex()}"
        ops.add_practice(vault, name, actor="test")
        ops.set_policy(vault, name, RetentionPolicy(keep_last=2, hourly=0, daily=1, weekly=0, monthly=0,
                                                    yearly=0, min_age_days=0.1), actor="test")
        self.name = name
        self.ids: list[bytes] = []
        self.promised: dict[bytes, float] = {}  # id -> time exists() said present

    @property
    def p(self) -> Any:
        return self.v.practice(self.name)

    def pick(self, idx: list[int]) -> list[bytes]:
        return sorted({self.ids[i % len(self.ids)] for i in idx}) if self.ids else []

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "pack":
            pk, ids = make_pack([50] * op[1])
            self.v.ingest("t", self.p, Handle(FileType.DATA, pk.name), pk.data)
            self.ids.extend(ids)
            now = self.clock.now().timestamp()
            for i in ids:
                self.promised[i] = now
        elif kind == "snap":
            refs = self.pick(op[1])
            if not refs:
                return
            snap = make_snapshot(refs, verdict="suspicious" if op[2] else "clean")
            now = self.clock.now().timestamp()
            try:
                self.v.ingest("t", self.p, Handle(FileType.SNAPSHOT, snap.name), snap.data)
            except MissingBlobs as exc:
                missing = {bytes.fromhex(m) for m in exc.missing}
                with self.v.engine.connect() as c:
                    assert not self.v.present_blobs(c, self.p.id, missing)
                # grace: what the vault said exists (or just received) within the grace period is there
                for m in missing:
                    assert now - self.promised.get(m, -1e18) >= GRACE, "a promised blob vanished within grace"
        elif kind == "exists":
            asked = self.pick(op[1])
            now = self.clock.now().timestamp()
            for i in self.v.exists(self.p, asked):
                self.promised[i] = now
        elif kind == "advance":
            self.clock.advance(op[1])
        elif kind == "gc":
            before = self.deleted_count()
            frozen = self.p.frozen
            gc.run_gc(self.v, self.p, actor="test")
            if frozen:
                assert self.deleted_count() == before, "deletion while frozen"
        elif kind == "freeze":
            ops.freeze(self.v, self.name, op[1], "test", actor="test")
        elif kind == "hold":  # hold (or release) the i-th kept snapshot
            s = db.snapshots
            with self.v.engine.connect() as c:
                rows = c.execute(sa.select(s.c.name, s.c.hold).where(s.c.practice_id == self.p.id, s.c.state == "kept")
                                 .order_by(s.c.name)).all()
            if rows:
                name, held = rows[op[1] % len(rows)]
                if op[2] or held is not None:
                    ops.set_hold(self.v, self.name, name, op[2], "case 1" if op[2] else "", actor="test")

    def deleted_count(self) -> int:
        with self.v.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(db.objects).where(
                db.objects.c.practice_id == self.p.id, db.objects.c.state == "deleted")).scalar_one())

    def check(self) -> None:
        """Every blob referenced by a kept snapshot is in a stored pack whose header lists it, and
        no snapshot under legal hold was forgotten."""
        pid = self.p.id
        backend = self.v.backend(self.p)
        with self.v.engine.connect() as c:
            assert not c.execute(sa.select(db.snapshots.c.name).where(
                db.snapshots.c.practice_id == pid, db.snapshots.c.hold.is_not(None),
                db.snapshots.c.state != "kept")).all(), "a held snapshot was forgotten"
            refs = {r[0] for r in c.execute(
                sa.select(db.snapshot_refs.c.blob_id).join(db.snapshots, sa.and_(
                    db.snapshots.c.practice_id == db.snapshot_refs.c.practice_id,
                    db.snapshots.c.name == db.snapshot_refs.c.snapshot)).where(
                    db.snapshot_refs.c.practice_id == pid, db.snapshots.c.state == "kept"))}
            where = {bytes(r.blob_id): r.pack for r in c.execute(
                sa.select(db.blobs.c.blob_id, db.blobs.c.pack).where(db.blobs.c.practice_id == pid))}
        for ref in refs:
            assert ref in where, "a kept snapshot references a blob whose pack was collected"
            data = backend.load(Handle(FileType.DATA, where[ref]))
            assert ref in {e.id for e in parse_pack_header(data, len(data)).entries}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op_st, min_size=3, max_size=25))
def test_gc_never_removes_referenced_blobs(sequence: list[tuple[Any, ...]]) -> None:
    w = World(*shared_vault())
    for op in sequence:
        w.run(op)
        w.check()
    w.run(("advance", 26 * 3600))
    w.run(("freeze", False))
    w.run(("gc",))
    w.check()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op_st, min_size=2, max_size=12), st.lists(st.lists(op_st, max_size=3), min_size=4, max_size=4))
def test_gc_phases_interleaved_with_uploads(prefix: list[tuple[Any, ...]],
                                            between: list[list[tuple[Any, ...]]]) -> None:
    """Run GC phase by phase, with uploads / snapshot commits / exists calls between phases."""
    w = World(*shared_vault())
    for op in prefix:
        w.run(op)
    w.run(("advance", 26 * 3600))
    v, p = w.v, w.p
    report = gc.GcReport(p.name)
    phases = [
        lambda: gc.forget(v, w.p, actor="t", report=report),
        lambda: gc._sweep(v, w.p, ("deleting",), ("snapshots",), report),
        lambda: gc._mark(v, w.p, actor="t", report=report),
        lambda: gc._write_index(v, w.p, actor="t", report=report),
        lambda: gc._sweep(v, w.p, ("deleting", "retained"), ("data",), report),
        lambda: gc._sweep(v, w.p, ("superseded",), ("index",), report),
    ]
    for i, phase in enumerate(phases):
        phase()
        w.check()
        for op in between[i % len(between)]:
            if op[0] in ("gc", "advance"):
                continue
            w.run(op)
            w.check()


def test_retention_ignores_suspicious_for_keep_last() -> None:
    pol = RetentionPolicy(keep_last=3, hourly=0, daily=0, weekly=0, monthly=0, yearly=0, min_age_days=1)
    now = 1_000_000_000.0
    good = [SnapRecord(f"g{i}", now - 10 * 86400 + i, False) for i in range(3)]
    flood = [SnapRecord(f"s{i}", now - 5 * 86400 + i, True) for i in range(100)]
    young = SnapRecord("young", now - 3600, True)
    kept, reasons = select_kept([*good, *flood, young], pol, now)
    assert {"g0", "g1", "g2", "young"} == kept
    assert reasons["young"] == "min-age"


@given(st.lists(st.tuples(st.floats(0, 400 * 86400), st.booleans()), max_size=60),
       st.integers(0, 5), st.integers(0, 5), st.floats(0, 30))
def test_retention_properties(items: list[tuple[float, bool]], last: int, daily: int, min_age: float) -> None:
    now = 2_000_000_000.0
    recs = [SnapRecord(f"n{i}", now - age, susp) for i, (age, susp) in enumerate(items)]
    pol = RetentionPolicy(keep_last=last, hourly=0, daily=daily, weekly=0, monthly=0, yearly=0, min_age_days=min_age)
    kept, _ = select_kept(recs, pol, now)
    for r in recs:
        if now - r.received < min_age * 86400:
            assert r.name in kept  # nothing under the minimum age is ever dropped
    clean = sorted((r for r in recs if not r.suspicious), key=lambda r: (r.received, r.name), reverse=True)
    assert {r.name for r in clean[:last]} <= kept  # the newest N clean ones always stay

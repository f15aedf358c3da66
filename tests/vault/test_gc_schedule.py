"""Retention + GC scheduled inside a REAL ``rempart vault serve`` process (``[gc] interval_seconds``):
it collects garbage by itself, respects incident freeze and minimum age, is audited and measured,
never removes a referenced blob while uploads race with it, and a SIGKILL in the middle of a
scheduled pass leaves a consistent index after restart."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rempart.core.errors import RempartError
from rempart.repository.format import parse_snapshot
from rempart.storage.base import FileType, Handle
from rempart.testing.servers import free_ports

from .conftest import VaultProc, cli, write_config
from .objects import garbage_and_one_snapshot, make_pack, make_snapshot
from .test_crash import check_consistent, storage_names

NO_CALENDAR = dict(hourly=0, daily=0, weekly=0, monthly=0, yearly=0)


def scheduled_vault(root: Path, gc: str) -> VaultProc:
    (port,) = free_ports(1)
    cfg = write_config(root, port, gc)  # grace_seconds = 0 plus the [gc] lines given
    v = VaultProc(root, cfg, port)
    v.pin = cli(cfg, "fingerprint").stdout.strip()
    v.admin_token = cli(cfg, "admin-token").stdout.strip().splitlines()[-1]
    return v


@pytest.fixture
def gc_vault(tmp_path: Path) -> Iterator[VaultProc]:
    v = scheduled_vault(tmp_path / "vault", "interval_seconds = 1\njitter_seconds = 0.5")
    try:
        yield v
    finally:
        v.stop()


def metric(v: VaultProc, name: str, labels: str = "") -> float:
    with v.admin() as c:
        text = c.get("/metrics").text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for(cond: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def audit_actions(v: VaultProc, actor: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    with v.admin() as c:
        while True:
            rows = c.get("/v1/admin/audit", params={"after": after, "limit": 1000}).json()
            if not rows:
                return out
            out += [r for r in rows if r["actor"] == actor]
            after = rows[-1]["seq"]


def test_scheduled_gc_collects_respects_freeze_and_min_age(gc_vault: VaultProc) -> None:
    v = gc_vault
    v.start()
    sizes: dict[str, int] = {}
    setup: dict[str, tuple[set[str], set[str]]] = {}  # practice -> (garbage packs, referenced packs)
    newest_pack: dict[str, str] = {}
    for kind in ("plain", "frozen", "young"):
        min_age = 30 if kind == "young" else 0
        name, toks = v.add_practice(f"gc-{kind}", keep_last=1, min_age_days=min_age, **NO_CALENDAR)
        if kind == "frozen":  # before any upload: the scheduler may pass at any moment
            with v.admin() as c:
                assert c.post(f"/v1/admin/practices/{name}/freeze", json={"reason": "test"}).status_code == 200
        b = v.backend(name, toks["backup"])
        garbage, referenced = set(), set()
        for _ in range(6):
            pk, _ = make_pack([4000])
            b.save(Handle(FileType.DATA, pk.name), pk.data)
            garbage.add(pk.name)
            sizes[pk.name] = len(pk.data)
        for _ in range(2):  # two snapshots, keep_last=1: the older one is forgotten unless too young
            pk, ids = make_pack([3000])
            b.save(Handle(FileType.DATA, pk.name), pk.data)
            s = make_snapshot(ids)
            b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
            referenced.add(pk.name)
            newest_pack[name] = pk.name
        b.close()
        setup[name] = (garbage, referenced)

    # the scheduler runs by itself: no CLI, no admin gc route
    plain_garbage, _ = setup["gc-plain"]
    newest = newest_pack["gc-plain"]
    assert wait_for(lambda: storage_names(v, "gc-plain", FileType.DATA) == {newest}), "scheduled GC did not collect"
    assert len(storage_names(v, "gc-plain", FileType.SNAPSHOT)) == 1

    # frozen: nothing forgotten, nothing deleted; young: the older snapshot and its pack are kept
    assert wait_for(lambda: metric(v, "rempart_vault_gc_practices_frozen_total") >= 2)
    frozen_garbage, frozen_refs = setup["gc-frozen"]
    assert storage_names(v, "gc-frozen", FileType.DATA) == frozen_garbage | frozen_refs
    assert len(storage_names(v, "gc-frozen", FileType.SNAPSHOT)) == 2
    young_garbage, young_refs = setup["gc-young"]
    # garbage gone, both snapshots' packs kept (waited for: the pass that counted the frozen
    # practice may not have reached gc-young yet; under load this failed now and then)
    assert wait_for(lambda: storage_names(v, "gc-young", FileType.DATA) == young_refs)
    assert len(storage_names(v, "gc-young", FileType.SNAPSHOT)) == 2

    # metrics and audit
    freed = metric(v, "rempart_vault_gc_bytes_freed_total")
    assert freed >= sum(sizes[n] for n in plain_garbage | young_garbage)
    assert metric(v, "rempart_vault_gc_last_run_timestamp_seconds") > 1.7e9
    assert metric(v, "rempart_vault_gc_runs_total", '{outcome="ok"}') >= 2
    assert metric(v, "rempart_vault_gc_errors_total") == 0
    acts = audit_actions(v, "vault-gc")
    assert any(a["action"] == "gc.scheduled" and a["outcome"] == "ok" for a in acts)
    assert any(a["action"] == "gc" and a["practice"] == "gc-plain" for a in acts)
    assert any(a["action"] == "retention" and a["outcome"] == "refused-frozen" for a in acts)
    with v.admin() as c:
        assert c.get("/v1/admin/audit/verify").json()["ok"]


def test_cli_gc_refused_while_a_pass_holds_the_lock(tmp_path: Path) -> None:
    from rempart.vault.gc_schedule import gc_lock

    v = scheduled_vault(tmp_path / "vault", "enabled = false")
    with gc_lock(v.root / "data" / "gc.lock") as got:
        assert got
        out = cli(v.cfg, "gc", check=False)
        assert out.returncode == 11 and "another garbage collection" in out.stderr
    assert cli(v.cfg, "gc").returncode == 0


@pytest.mark.slow
def test_scheduled_gc_never_removes_a_referenced_blob_while_uploads_race(gc_vault: VaultProc) -> None:
    v = gc_vault
    v.start()
    name, toks = v.add_practice(keep_last=1, min_age_days=0, **NO_CALENDAR)
    accepted: dict[str, tuple[str, list[bytes]]] = {}  # snapshot -> (pack, blob ids)
    stop = threading.Event()
    errors: list[str] = []

    def upload() -> None:
        b = v.backend(name, toks["backup"], attempts=1)
        while not stop.is_set():
            try:
                pk, ids = make_pack([2000, 3000])
                b.save(Handle(FileType.DATA, pk.name), pk.data)
                s = make_snapshot(ids)
                b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
                accepted[s.name] = (pk.name, ids)
            except RempartError as exc:  # grace 0: GC may collect a pack before its snapshot came
                errors.append(exc.reference)
        b.close()

    ts = [threading.Thread(target=upload) for _ in range(3)]
    for t in ts:
        t.start()
    passes0 = metric(v, "rempart_vault_gc_runs_total", '{outcome="ok"}')
    try:
        assert wait_for(lambda: metric(v, "rempart_vault_gc_runs_total", '{outcome="ok"}') >= passes0 + 4, 60)
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=60)
    assert metric(v, "rempart_vault_gc_snapshots_forgotten_total") > 0, "GC never raced with anything"
    assert set(errors) <= {"missing-blobs"}, errors
    b = v.backend(name, toks["restore"])
    kept = {f.name for f in b.list(FileType.SNAPSHOT)}
    assert kept
    stored = storage_names(v, name, FileType.DATA)
    for s in kept:  # every kept snapshot's blobs are in a stored, readable pack
        refs = parse_snapshot(b.load(Handle(FileType.SNAPSHOT, s))).refs
        pack, ids = accepted[s]
        assert set(refs) == set(ids) and pack in stored
        assert b.exists(ids) == {i.hex() for i in ids}
        assert len(b.load(Handle(FileType.DATA, pack))) > 5000
    b.close()


@pytest.mark.slow
def test_sigkill_during_scheduled_gc_leaves_a_consistent_index(tmp_path: Path) -> None:
    v = scheduled_vault(tmp_path / "vault", "enabled = false")
    try:
        v.start()
        name, toks = v.add_practice(keep_last=1, min_age_days=0, **NO_CALENDAR)
        b = v.backend(name, toks["backup"])
        s, keep, ids = garbage_and_one_snapshot(b, 400)
        b.close()
        v.stop()
        before = len(storage_names(v, name, FileType.DATA))
        text = v.cfg.read_text().replace("enabled = false", "interval_seconds = 1\njitter_seconds = 0")
        v.cfg.write_text(text)
        v.start()
        # kill as soon as the scheduled pass has started deleting
        assert wait_for(lambda: len(storage_names(v, name, FileType.DATA)) < before, 30)
        v.kill()
        left = storage_names(v, name, FileType.DATA)
        v.cfg.write_text(text.replace("interval_seconds = 1", "enabled = false"))
        v.start()
        check_consistent(v, name, toks["restore"], {s.name: s.data}, exact=False)
        rb = v.backend(name, toks["restore"])
        assert rb.exists(ids) == {i.hex() for i in ids}
        rb.close()
        v.stop()
        cli(v.cfg, "gc")  # the next pass finishes what the killed one started
        v.start()
        check_consistent(v, name, toks["restore"], {s.name: s.data}, exact=True)
        assert storage_names(v, name, FileType.DATA) == {keep.name}
        assert len(left) > 1, "the pass had finished before the kill: nothing was tested"
        with v.admin() as c:
            assert c.get("/v1/admin/audit/verify").json()["ok"]
    finally:
        v.stop()  # the last start() must not outlive the test


def test_first_pass_is_due_one_interval_after_the_last_one_across_restarts(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from rempart.core.clock import FakeClock
    from rempart.vault.bootstrap import open_vault
    from rempart.vault.config import parse_config
    from rempart.vault.gc_schedule import GcMetrics, GcScheduler

    clock = FakeClock()
    vault = open_vault(parse_config({"tls": {"enabled": False}}, tmp_path), clock)

    def sched() -> GcScheduler:  # a new process: nothing in memory, only the database
        return GcScheduler(vault, GcMetrics(CollectorRegistry()), interval=86400, jitter=0)

    assert sched().first_wait() == 86400  # never ran: one interval
    res = sched().run_pass()
    assert res.ran and not res.errors
    clock.advance(3600)
    assert sched().first_wait() == pytest.approx(86400 - 3600)
    clock.advance(2 * 86400)  # the vault was down past the due time: run at once
    assert sched().first_wait() == 0


def test_scheduled_pass_scrubs_within_its_budget_and_finds_damage(tmp_path: Path) -> None:
    """``[gc] scrub_gib``: after each practice's GC the pass re-hashes its objects (no key); a
    pack damaged behind the vault's back is found by a later pass, audited and counted."""
    v = scheduled_vault(tmp_path / "vault", "interval_seconds = 1\njitter_seconds = 0\nscrub_gib = 1")
    v.start()
    try:
        name, toks = v.add_practice()
        b = v.backend(name, toks["backup"])
        pk, ids = make_pack([5000, 7000])
        b.save(Handle(FileType.DATA, pk.name), pk.data)
        snap = make_snapshot(ids)
        b.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
        b.close()

        def scrubs() -> list[dict[str, Any]]:
            return [r for r in audit_actions(v, "vault-gc") if r["action"] == "scrub" and r["practice"] == name]

        assert wait_for(lambda: any(r["outcome"] == "ok" and json.loads(r["detail"])["objects"] == 2
                                    for r in scrubs()))
        path = next((v.root / "data" / "storage" / name / "data").rglob(pk.name))
        path.chmod(0o644)
        path.write_bytes(pk.data[:-1] + bytes([pk.data[-1] ^ 1]))
        assert wait_for(lambda: any(r["outcome"] == "damaged" for r in scrubs()))
        assert path.exists()  # found, reported, never deleted
        assert metric(v, "rempart_vault_scrub_damaged_objects_total") >= 1
        assert metric(v, "rempart_vault_scrub_bytes_total") >= len(pk.data) + len(snap.data)
    finally:
        v.stop()

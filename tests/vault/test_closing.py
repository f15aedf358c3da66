"""Closing a practice at the end of its contract: tokens revoked at once, data kept for the
grace period (its retention minimum age), then erased by GC except what is under legal hold,
with a destruction record in the audit trail (in-process service, FakeClock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rempart.core.clock import FakeClock
from rempart.core.errors import PermissionDenied, UserError
from rempart.storage.base import FileType, Handle
from rempart.vault import closing, db, gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import RetentionPolicy, parse_config

from .objects import make_config, make_index, make_pack, make_snapshot

DAY = 86400.0


def audit(v: Any, action: str) -> list[dict[str, Any]]:
    with v.engine.connect() as conn:
        return [json.loads(r.detail or "{}") for r in conn.execute(
            sa.select(db.audit.c.detail).where(db.audit.c.action == action).order_by(db.audit.c.seq))]


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


@pytest.fixture
def closing_vault(tmp_path: Path) -> tuple[Any, FakeClock, dict[str, Any]]:
    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 3600}}, tmp_path), clock)
    toks = ops.add_practice(v, "doc", actor="t")
    ops.set_policy(v, "doc", RetentionPolicy(keep_last=5, hourly=0, daily=0, weekly=0, monthly=0, yearly=0,
                                             min_age_days=7), actor="t")
    v.ingest("t", v.practice("doc"), Handle(FileType.CONFIG, "config"), make_config())
    objs: dict[str, Any] = {"tokens": toks, "snaps": []}
    entries = []
    for size in (1000, 2000, 3000):
        pk, ids = make_pack([size])
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
        entries.append((pk.name, ids, [size]))
        s = make_snapshot(ids)
        v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s.name), s.data)
        objs["snaps"].append(s.name)
        clock.advance(DAY)
    idx = make_index(entries)
    v.ingest("t", v.practice("doc"), Handle(FileType.INDEX, idx.name), idx.data)
    return v, clock, objs


def test_close_then_erase_after_the_grace_period_keeping_held_snapshots_until_released(
        closing_vault: tuple[Any, FakeClock, dict[str, Any]], tmp_path: Path) -> None:
    v, clock, objs = closing_vault
    root = tmp_path / "storage" / "doc"
    before = stored_files(root)
    assert len(before) == 8  # config, three packs, three snapshots, one index
    with pytest.raises(UserError, match="needs a reason"):
        closing.close(v, "doc", " ", actor="admin")
    erase_after = closing.close(v, "doc", "contract ended 2026-11-30", actor="admin")
    assert erase_after == pytest.approx(v.now() + 7 * DAY)
    (rec,) = audit(v, "practice.close")
    assert rec["tokens_revoked"] == 2 and rec["stored_objects"] == 8 and rec["stored_bytes"] > 6000
    with v.engine.connect() as conn:
        assert conn.execute(sa.select(db.tokens.c.revoked).where(db.tokens.c.practice_id == v.practice("doc").id)) \
            .scalars().all() == [True, True]
    # no more backups, no new agent; a restore token to take its data is still possible
    with pytest.raises(UserError, match="only a restore token"):
        ops.new_token(v, "doc", "backup", actor="admin")
    with pytest.raises(UserError, match="no new agent"):
        ops.enroll_code(v, "doc", actor="admin")
    assert ops.new_token(v, "doc", "restore", actor="admin").startswith("rvt_")
    pk, _ = make_pack([10])
    with pytest.raises(PermissionDenied, match="closed"):
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    ops.set_hold(v, "doc", objs["snaps"][0], True, "litigation 12", actor="admin")

    # within the grace period nothing goes; it can even be reopened and closed again
    clock.advance(6 * DAY)
    rep = gc.run_gc(v, v.practice("doc"), actor="gc")
    assert rep.forgotten == [] and rep.deleted_packs == [] and not rep.erased
    closing.reopen(v, "doc", "changed its mind", actor="admin")
    closing.close(v, "doc", "contract ended after all", actor="admin")
    clock.advance(8 * DAY)
    with pytest.raises(UserError, match="cannot be reopened"):
        closing.reopen(v, "doc", "too late", actor="admin")

    # past it: everything goes but the held snapshot, its pack and what it needs
    rep = gc.run_gc(v, v.practice("doc"), actor="gc")
    assert sorted(rep.forgotten) == sorted(objs["snaps"][1:]) and len(rep.deleted_packs) == 2
    assert not rep.erased
    held_left = stored_files(root)
    assert f"snapshots/{objs['snaps'][0]}" in held_left and "config" in held_left
    # the hold is released: the next pass erases the rest
    ops.set_hold(v, "doc", objs["snaps"][0], False, "litigation over", actor="admin")
    clock.advance(2 * 3600)  # GC's grace for packs
    rep = gc.run_gc(v, v.practice("doc"), actor="gc")
    assert rep.erased, rep
    assert stored_files(root) == []
    p = v.practice("doc")
    assert p.erased_at == pytest.approx(v.now()) and p.used_bytes == 0
    (erased,) = audit(v, "practice.erased")
    assert erased["closing_reason"] == "contract ended after all" and erased["objects_left"] == 0
    assert not gc.run_gc(v, v.practice("doc"), actor="gc").erased  # said once
    with v.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.objects).where(
            db.objects.c.practice_id == p.id, db.objects.c.state != "deleted")).scalar_one() == 0
    assert ops.status(v, v.practice("doc"))["erased_at"] == p.erased_at


def test_an_incident_freeze_stops_the_erasure_too(closing_vault: tuple[Any, FakeClock, dict[str, Any]],
                                                   tmp_path: Path) -> None:
    v, clock, _ = closing_vault
    closing.close(v, "doc", "contract ended", actor="admin")
    ops.freeze(v, "doc", True, "suspicious activity", actor="admin")
    clock.advance(30 * DAY)
    rep = gc.run_gc(v, v.practice("doc"), actor="gc")
    assert rep.frozen and rep.forgotten == [] and not rep.erased
    assert len(stored_files(tmp_path / "storage" / "doc")) == 8


def test_a_closed_practice_expects_nothing_from_the_watch(closing_vault: tuple[Any, FakeClock, dict[str, Any]]) -> None:
    from rempart.vault.watch.service import WatchService

    v, clock, _ = closing_vault
    ops.add_practice(v, "other", actor="t")
    watch = WatchService(v, v.config.watch)
    assert {s.name for s in watch.watch.states()} == {"doc", "other"}
    clock.advance(30 * DAY)  # long silent: both would be late
    assert {e[0] for e in watch.watch.evaluate().actions} == {"doc", "other"}
    closing.close(v, "doc", "contract ended", actor="admin")
    assert {s.name for s in watch.watch.states()} == {"other"}
    clock.advance(DAY)
    assert "doc" not in {e[0] for e in watch.watch.evaluate().actions}


def test_closing_through_the_vault_process_stops_its_tokens_at_once(vault: Any) -> None:
    from .conftest import cli

    name, toks = vault.add_practice()
    with vault.client(toks["backup"]) as c:
        assert c.get(f"/v1/p/{name}/status").status_code == 200
    with vault.admin() as c:
        assert c.post(f"/v1/admin/practices/{name}/close", json={"reason": ""}).status_code == 422
        r = c.post(f"/v1/admin/practices/{name}/close", json={"reason": "contract ended"})
        assert r.status_code == 200 and r.json()["closed"] is True
        assert c.post(f"/v1/admin/practices/{name}/tokens", json={"scope": "backup"}).status_code == 400
        assert c.get(f"/v1/admin/practices/{name}").json()["closed_at"] is not None
    for tok in toks.values():
        with vault.client(tok) as c:
            assert c.get(f"/v1/p/{name}/status").status_code == 401
    out = cli(vault.cfg, "practice", "list")
    assert any(line.startswith(name) and line.endswith("CLOSED") for line in out.stdout.splitlines())
    r = cli(vault.cfg, "practice", "reopen", name, "--reason", "mistake", "--json")
    assert json.loads(r.stdout) == {"closed": False}


def test_the_replica_follows_a_closed_practice_to_its_erasure(tmp_path: Path) -> None:
    from rempart.vault.replica import open_replica, replicate_practice

    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 0},
                                 "replica": {"kind": "local", "path": str(tmp_path / "site-b")}}, tmp_path), clock)
    ops.add_practice(v, "doc", actor="t")
    v.ingest("t", v.practice("doc"), Handle(FileType.CONFIG, "config"), make_config())
    pk, ids = make_pack([1000])
    v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    s = make_snapshot(ids)
    v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s.name), s.data)
    replica = open_replica(v)
    assert replicate_practice(v, replica, v.practice("doc"), actor="t").copied == 2  # and the config
    assert len(stored_files(tmp_path / "site-b" / "doc")) == 3
    closing.close(v, "doc", "contract ended", actor="admin")
    clock.advance(31 * DAY)
    assert gc.run_gc(v, v.practice("doc"), actor="gc").erased
    rep = replicate_practice(v, replica, v.practice("doc"), actor="t")
    assert rep.removed == 3 and stored_files(tmp_path / "site-b" / "doc") == []

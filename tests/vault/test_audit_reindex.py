"""Audit trail verification (edit, deletion, truncation), rebuild-index from storage alone, and
the authentication-failure rate limit (in-process app, injected clock)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rempart.core.clock import FakeClock, SystemClock
from rempart.storage.base import FileType, Handle
from rempart.vault import db
from rempart.vault import practices as ops
from rempart.vault.app import create_app
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import load_config, parse_config
from rempart.vault.reindex import rebuild_index

from .conftest import PY, cli, write_config
from .objects import make_pack, make_snapshot


def populated(tmp_path: Path) -> tuple[Path, Any]:
    cfg = write_config(tmp_path, 1)
    v = open_vault(load_config(cfg), SystemClock())
    ops.add_practice(v, "doc", actor="t")
    p = v.practice("doc")
    for _ in range(3):
        pk, ids = make_pack()
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
        s = make_snapshot(ids)
        v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s.name), s.data)
    ops.freeze(v, "doc", True, "drill", actor="t")
    assert p.name == "doc"
    return cfg, v


def sql(cfg: Path, stmt: str) -> None:
    con = sqlite3.connect(cfg.parent / "data" / "vault.db")
    con.execute(stmt)
    con.commit()
    con.close()


def test_audit_verify_ok_then_detects_edit(tmp_path: Path) -> None:
    cfg, _ = populated(tmp_path)
    out = cli(cfg, "audit", "verify")
    assert "OK" in out.stdout
    sql(cfg, "UPDATE audit SET outcome = 'ok', actor = 'token:innocent' WHERE action = 'freeze'")
    out = cli(cfg, "audit", "verify", check=False)
    assert out.returncode == 20 and "modified" in out.stdout


def test_audit_verify_detects_deleted_record(tmp_path: Path) -> None:
    cfg, _ = populated(tmp_path)
    sql(cfg, "DELETE FROM audit WHERE seq = 3")
    out = cli(cfg, "audit", "verify", check=False)
    assert out.returncode == 20 and "missing" in out.stdout


def test_audit_verify_detects_truncation(tmp_path: Path) -> None:
    cfg, _ = populated(tmp_path)
    sql(cfg, "DELETE FROM audit WHERE seq > 4")  # the chain of records 1..4 is still valid
    out = cli(cfg, "audit", "verify", check=False)
    assert out.returncode == 20 and "truncated" in out.stdout


def test_audit_verify_detects_a_deleted_first_record(tmp_path: Path) -> None:
    cfg, _ = populated(tmp_path)
    sql(cfg, "DELETE FROM audit WHERE seq = 1")
    out = cli(cfg, "audit", "verify", check=False)
    assert out.returncode == 20 and "record 1 is missing" in out.stdout


def test_audit_export_is_checked_elsewhere_and_tampering_shows(tmp_path: Path) -> None:
    """``audit export`` writes every record as JSON Lines; ``verify --file`` checks it with no
    vault at hand, against a copy of the checkpoint; an edited, dropped or cut line fails."""
    cfg, v = populated(tmp_path)
    away = tmp_path / "auditor"
    away.mkdir()
    export = away / "audit.jsonl"
    out = cli(cfg, "audit", "export", "--output", str(export))
    total = int(out.stdout.split()[0])
    lines = export.read_text().splitlines()
    assert total == len(lines) >= 8 and json.loads(lines[0])["seq"] == 1
    assert cli(cfg, "audit", "export").stdout.splitlines() == lines  # the same on standard output
    refused = cli(cfg, "audit", "export", "--output", str(export), check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    checkpoint = away / "checkpoint.json"
    checkpoint.write_bytes(v.config.audit_checkpoint.read_bytes())

    def check(text: str, *extra: str) -> Any:
        f = away / f"copy-{len(list(away.iterdir()))}.jsonl"
        f.write_text(text)
        argv = [PY, "-m", "rempart.cli.main", "vault", "audit", "verify", "--file", str(f), *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=away)

    ok = check("\n".join(lines) + "\n", "--checkpoint", str(checkpoint))
    assert ok.returncode == 0 and f"OK: {total} records" in ok.stdout, ok.stdout + ok.stderr
    edited = [json.loads(x) for x in lines]
    edited[3]["actor"] = "token:innocent"
    bad = check("\n".join(json.dumps(x) for x in edited))
    assert bad.returncode == 20 and "record 4: content was modified" in bad.stdout
    assert "record 3 is missing" in check("\n".join(lines[:2] + lines[3:])).stdout
    cut = check("\n".join(lines[:-2]), "--checkpoint", str(checkpoint))
    assert cut.returncode == 20 and "truncated" in cut.stdout
    headless = check("\n".join(lines[2:]))
    assert headless.returncode == 20 and "record 1 is missing" in headless.stdout
    # an export made with --after is checked with --partial: from its first record on
    part = cli(cfg, "audit", "export", "--after", "2").stdout
    assert json.loads(part.splitlines()[0])["seq"] == 3
    assert check(part, "--partial", "--checkpoint", str(checkpoint)).returncode == 0
    garbage = check("not json\n")
    assert garbage.returncode == 2 and "line 1 is not JSON" in garbage.stderr


def test_rebuild_index_from_storage_alone(tmp_path: Path) -> None:
    cfg, v = populated(tmp_path)
    p = v.practice("doc")
    before = {t: [f.name for f in v.list_files(p, t)] for t in (FileType.DATA, FileType.SNAPSHOT)}
    status_before = ops.status(v, p)
    # wipe the whole index part of the database
    sql(cfg, "DELETE FROM blobs")
    sql(cfg, "DELETE FROM snapshots")
    sql(cfg, "DELETE FROM snapshot_refs")
    sql(cfg, "DELETE FROM objects")
    assert v.list_files(p, FileType.DATA) == []
    out = cli(cfg, "rebuild-index")
    assert "6 objects" in out.stdout
    p = v.practice("doc")
    after = {t: [f.name for f in v.list_files(p, t)] for t in (FileType.DATA, FileType.SNAPSHOT)}
    assert after == before
    st = ops.status(v, p)
    assert st["used_bytes"] == status_before["used_bytes"]
    # server receive times come back from the audit trail, not from "now"
    assert st["last_snapshot_at"] == pytest.approx(status_before["last_snapshot_at"])
    # a complete loss of the database: practices come back from storage
    (cfg.parent / "data" / "vault.db").unlink()
    for extra in ("vault.db-wal", "vault.db-shm"):
        (cfg.parent / "data" / extra).unlink(missing_ok=True)
    v2 = open_vault(load_config(cfg), SystemClock())
    rep = rebuild_index(v2, actor="t")
    assert rep.practices == 1 and rep.snapshots == 3
    assert [f.name for f in v2.list_files(v2.practice("doc"), FileType.SNAPSHOT)] == before[FileType.SNAPSHOT]
    with v2.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.blobs)).scalar_one() == 6


def test_auth_failure_rate_limit_per_ip_and_practice(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = parse_config({"tls": {"enabled": False}, "limits": {
        "auth_failures_per_ip": 5, "auth_failures_per_practice": 8, "auth_window_seconds": 60}}, tmp_path)
    app = create_app(cfg, clock)
    toks = ops.add_practice(app.state.vault, "doc", actor="t")
    good = {"Authorization": f"Bearer {toks['backup']}"}
    bad = {"Authorization": "Bearer rvt_000000000000_nope"}
    attacker = TestClient(app, client=("203.0.113.9", 4000))
    agent = TestClient(app, client=("198.51.100.7", 4000))
    for _ in range(5):
        assert attacker.get("/v1/p/doc/status", headers=bad).status_code == 401
    # the attacker's address is now blocked, even with a valid token
    r = attacker.get("/v1/p/doc/status", headers=good)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # the practice's own agent is unaffected
    assert agent.get("/v1/p/doc/status", headers=good).status_code == 200
    # other addresses spraying the same practice: blocked after the per-practice limit...
    for i in range(3):
        TestClient(app, client=(f"203.0.113.{20 + i}", 1)).get("/v1/p/doc/status", headers=bad)
    sprayer = TestClient(app, client=("203.0.113.99", 1))
    assert sprayer.get("/v1/p/doc/status", headers=bad).status_code == 401
    assert sprayer.get("/v1/p/doc/status", headers=good).status_code == 429
    # ...but an address that never failed still gets through
    assert agent.get("/v1/p/doc/status", headers=good).status_code == 200
    clock.advance(61)
    assert attacker.get("/v1/p/doc/status", headers=good).status_code == 200


def test_rebuild_index_puts_back_holds_and_false_positive_marks_from_the_audit_trail(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1)
    v = open_vault(load_config(cfg), SystemClock())
    ops.add_practice(v, "doc", actor="t")
    names = []
    for verdict in ("clean", "clean", "suspicious", "suspicious"):
        pk, ids = make_pack()
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
        s = make_snapshot(ids, verdict=verdict)
        v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, s.name), s.data)
        names.append(s.name)
    held, released, fp, bad = names
    ops.set_hold(v, "doc", held, True, "case A", actor="admin")
    ops.set_hold(v, "doc", released, True, "case B", actor="admin")
    ops.set_hold(v, "doc", released, False, "closed", actor="admin")
    ops.mark_false_positive(v, "doc", fp, actor="admin")
    ops.freeze(v, "doc", False, "looked at it", actor="admin")
    rep = rebuild_index(v, actor="t")
    assert rep.marks == 2
    tl = {t["name"]: t for t in ops.timeline(v, v.practice("doc"))}
    assert tl[held]["hold"] == "case A" and tl[released]["hold"] is None and tl[bad]["hold"] is None
    assert tl[fp]["false_positive"] and not tl[bad]["false_positive"]
    assert v.practice("doc").frozen  # the unmarked suspicious snapshot freezes the rebuilt practice
    # marked false positive, it would not have
    ops.mark_false_positive(v, "doc", bad, actor="admin")
    ops.freeze(v, "doc", False, "looked again", actor="admin")
    rebuild_index(v, actor="t")
    assert not v.practice("doc").frozen


def test_backup_db_copies_the_live_database_consistently(tmp_path: Path) -> None:
    from rempart.vault.audit import verify_records

    cfg, _ = populated(tmp_path)
    out = tmp_path / "safe" / "vault-copy.db"
    out.parent.mkdir()
    run = subprocess.run([PY, "-m", "rempart.cli.main", "--json", "vault", "backup-db", "--output", str(out),
                          "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    con = sqlite3.connect(out)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert [r[0] for r in con.execute("SELECT name FROM practices")] == ["doc"]
        cols = [d[1] for d in con.execute("PRAGMA table_info(audit)")]
        rows = [dict(zip(cols, r, strict=True)) for r in con.execute("SELECT * FROM audit ORDER BY seq")]
    finally:
        con.close()
    assert info["audit_records"] == len(rows) > 5 and info["audit_head"] == rows[-1]["hash"]
    assert verify_records(rows, None).ok  # the copied trail is whole and chained
    again = cli(cfg, "backup-db", "--output", str(out), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr

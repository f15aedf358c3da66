"""`rempart vault scrub` on a real vault's storage: every stored object re-hashed against its
name without any key; a flipped bit, a truncation and a vanished file are each named, raise the
watch's red "damage" condition, are never deleted, and clear once the bytes are right again; a
byte budget cycles through the objects over several passes, least recently verified first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def rempart(repo: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "-r", repo, *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def vault_cmd(vault: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "vault", *args, "--config",
                           str(vault.cfg)], capture_output=True, text=True, timeout=300)


def scrub(vault: Any, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
    r = vault_cmd(vault, "scrub", "--practice", name, *extra)
    assert r.returncode in (0, 20), r.stderr
    (rep,) = json.loads(r.stdout)
    return r.returncode, rep


def conditions(vault: Any, name: str) -> dict[str, str]:
    r = vault_cmd(vault, "watch", "status")
    assert r.returncode == 0, r.stderr
    row = next(x for x in json.loads(r.stdout) if x["practice"] == name)
    return dict(row["conditions"]) | {"light": row["light"]}


def backed_up(vault: Any, tmp_path: Path) -> tuple[str, Path]:
    name, toks = vault.add_practice()
    src = tmp_path / "cabinet"
    src.mkdir()
    for i in range(12):
        (src / f"radio-{i}.dcm").write_bytes(os.urandom(40_000 + 5_000 * i))
    env = {"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin, "REMPART_KDF_TEST": "1",
           "REMPART_KIT_PASSPHRASE": "a long and private passphrase", "REMPART_STATE_DIR": str(tmp_path / "st")}
    repo = f"{vault.url}/{name}"
    assert rempart(repo, env, "init", "--kit", str(tmp_path / "kit")).returncode == 0
    r = rempart(repo, env, "backup", "--no-detect", str(src))  # random bytes would look like an attack
    assert r.returncode == 0, r.stderr
    return name, vault.root / "data" / "storage" / name


def stored(root: Path) -> dict[str, Path]:
    """type/name -> file, for the objects the scrub checks (not the config)."""
    return {f"{d}/{p.name}": p for d in ("data", "index", "snapshots") for p in (root / d).rglob("*") if p.is_file()}


def test_scrub_names_damage_keeps_it_and_clears_when_repaired(vault: Any, tmp_path: Path) -> None:
    name, root = backed_up(vault, tmp_path)
    objects = stored(root)
    assert len([k for k in objects if k.startswith("data/")]) >= 1 and len(objects) >= 3
    code, rep = scrub(vault, name)
    assert code == 0 and rep["damaged"] == [] and rep["objects"] == len(objects)
    assert rep["bytes"] == sum(p.stat().st_size for p in objects.values())
    assert "damage" not in conditions(vault, name)

    pack = next(p for k, p in objects.items() if k.startswith("data/"))
    index = next(p for k, p in objects.items() if k.startswith("index/"))
    snap = next(p for k, p in objects.items() if k.startswith("snapshots/"))
    saved = {p: p.read_bytes() for p in (pack, index, snap)}
    for p in saved:
        p.chmod(0o644)
    flipped = bytearray(saved[pack])
    flipped[len(flipped) // 2] ^= 0x10
    pack.write_bytes(bytes(flipped))           # a flipped bit
    snap.write_bytes(saved[snap][:-1])          # cut short
    index.unlink()                              # gone
    try:
        code, rep = scrub(vault, name)
        assert code == 20
        found = {(d["type"], d["name"], d["damage"]) for d in rep["damaged"]}
        assert found == {("data", pack.name, "sha256"), ("snapshots", snap.name, "size"), ("index", index.name, "missing")}
        cond = conditions(vault, name)
        assert cond.get("damage") == "damage" and cond["light"] == "red"
        assert pack.exists() and snap.exists()  # the scrub never deletes or rewrites
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    code, rep = scrub(vault, name)
    assert code == 0 and rep["damaged"] == [] and rep["repaired"] == 3
    assert "damage" not in conditions(vault, name)
    with vault.admin() as c:
        recs: list[dict[str, Any]] = []
        while page := c.get("/v1/admin/audit", params={"after": recs[-1]["seq"] if recs else 0, "limit": 1000}).json():
            recs += page
    mine = [(r["outcome"], json.loads(r["detail"])) for r in recs if r["practice"] == name and r["action"] == "scrub"]
    assert [o for o, _ in mine] == ["ok", "damaged", "ok"]
    assert mine[1][1]["damaged"] == 3 and f"data/{pack.name}:sha256" in mine[1][1]["names"]


def test_a_byte_budget_cycles_through_the_objects(vault: Any, tmp_path: Path) -> None:
    name, root = backed_up(vault, tmp_path)
    objects = stored(root)
    code, rep = scrub(vault, name, "--max-gib", "0.000000001")  # 1 byte: one object per pass
    assert code == 0 and rep["objects"] == 1
    victim = next(p for k, p in objects.items() if k.startswith("snapshots/"))
    good = victim.read_bytes()
    victim.chmod(0o644)
    victim.write_bytes(good[:-1])
    try:
        seen = [scrub(vault, name, "--max-gib", "0.000000001") for _ in range(len(objects))]
    finally:
        victim.write_bytes(good)
    assert all(rep["objects"] == 1 for _, rep in seen)
    # every object is verified within one cycle, the damaged one exactly once
    assert sum(len(rep["damaged"]) for _, rep in seen) == 1
    assert [code for code, _ in seen].count(20) == 1
    code, rep = scrub(vault, name)  # a whole pass: the repaired snapshot is right again
    assert code == 0 and rep["repaired"] == 1 and rep["objects"] == len(objects)
    r = vault_cmd(vault, "scrub", "--practice", name, "--max-gib", "0")
    assert r.returncode == 2 and "--max-gib must be positive" in r.stderr


def test_migrations_3_to_6_add_their_columns_and_keep_the_rows(tmp_path: Path) -> None:
    """3: the scrub's columns; 4: the lock renewal's date; 5: legal holds; 6: closing."""
    import sqlalchemy as sa

    from rempart.vault import db

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'v2.db'}")
    with engine.begin() as conn:  # the three tables these migrations touch, as migrations 1-2 left them
        conn.execute(sa.text("CREATE TABLE objects (practice_id INTEGER, type VARCHAR(16), name VARCHAR(64), "
                             "size BIGINT, created FLOAT, state VARCHAR(16), PRIMARY KEY (practice_id, type, name))"))
        conn.execute(sa.text("INSERT INTO objects VALUES (1, 'data', 'ab', 10, 1.0, 'live')"))
        conn.execute(sa.text("CREATE TABLE snapshots (practice_id INTEGER, name VARCHAR(64), received FLOAT, "
                             "client_time VARCHAR(64), verdict VARCHAR(16), detection TEXT, stats TEXT, "
                             "false_positive BOOLEAN, state VARCHAR(16), PRIMARY KEY (practice_id, name))"))
        conn.execute(sa.text("INSERT INTO snapshots VALUES (1, 'cd', 2.0, NULL, 'clean', NULL, NULL, 0, 'kept')"))
        conn.execute(sa.text("CREATE TABLE practices (id INTEGER PRIMARY KEY, name VARCHAR(64), created FLOAT, "
                             "quota_bytes BIGINT, used_bytes BIGINT, frozen BOOLEAN, frozen_reason VARCHAR(200), "
                             "frozen_at FLOAT, policy TEXT, last_snapshot_at FLOAT)"))
        conn.execute(sa.text("INSERT INTO practices VALUES (1, 'doc', 1.0, 0, 10, 0, NULL, NULL, NULL, NULL)"))
        db.schema_version.create(conn)
        conn.execute(db.schema_version.insert().values(version=2))
    assert db.migrate(engine) == 7
    with engine.connect() as conn:
        row = conn.execute(sa.select(db.objects)).one()
        snap = conn.execute(sa.select(db.snapshots)).one()
    assert (row.name, row.size, row.state, row.verified, row.damage, row.locked_until) == \
        ("ab", 10, "live", None, None, None)
    assert (snap.name, snap.state, snap.hold, snap.held_at) == ("cd", "kept", None, None)
    with engine.connect() as conn:
        prac = conn.execute(sa.select(db.practices)).one()
    assert (prac.name, prac.used_bytes, prac.closed_at, prac.erased_at) == ("doc", 10, None, None)
    assert db.migrate(engine) == 7  # idempotent

"""``rempart vault rebuild-index`` on S3 storage rebuilds the whole index from the bucket alone:
a vault whose database was lost (a fresh data_dir, no practice row, no audit) lists the
bucket's practices (also one whose every key lies under a delete marker), re-reads pack headers and snapshots, and serves restores again. Real
SeaweedFS with Object Lock, real vault processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from rempart.storage.base import FileType, Handle
from rempart.testing.servers import s3_client

from .conftest import cli, s3_vault
from .objects import make_config, make_pack, make_snapshot


@pytest.mark.slow
def test_s3_rebuild_index_from_the_bucket_alone(seaweed: Any, tmp_path: Path) -> None:
    bucket = f"vault-{uuid.uuid4().hex[:10]}"
    v = s3_vault(tmp_path / "a", seaweed, bucket)
    v.start()
    stored: dict[str, dict[str, Any]] = {}
    try:
        for kind in ("clean", "attacked"):
            name, toks = v.add_practice(f"{kind}-{uuid.uuid4().hex[:6]}")
            b = v.backend(name, toks["backup"])
            b.save(Handle(FileType.CONFIG, "config"), make_config())
            ids_all: list[bytes] = []
            snaps = []
            for i in range(3):
                pk, ids = make_pack([1000 + i, 2000])
                b.save(Handle(FileType.DATA, pk.name), pk.data)
                ids_all += ids
                s = make_snapshot(ids, verdict="suspicious" if kind == "attacked" and i == 2 else "clean")
                b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
                snaps.append(s)
            b.close()
            stored[name] = {"ids": ids_all, "snaps": {s.name: s.data for s in snaps}, "attacked": kind == "attacked"}
    finally:
        v.stop()

    # an attacker holding the vault's S3 credential puts a delete marker over every key of the
    # attacked practice: the locked versions stay, and the rebuild must still find the practice
    raw: Any = s3_client(seaweed, seaweed.admin)
    attacked = next(n for n, e in stored.items() if e["attacked"])
    keys = [o["Key"] for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{attacked}/")
            for o in page.get("Contents", [])]
    assert len(keys) == 7  # config, three packs, three snapshots
    for key in keys:
        raw.delete_object(Bucket=bucket, Key=key)
    assert raw.list_objects_v2(Bucket=bucket, Prefix=f"{attacked}/").get("KeyCount", 0) == 0

    # the database is lost: a new vault on a fresh data_dir, same bucket, rebuilt from storage only
    w = s3_vault(tmp_path / "b", seaweed, bucket)
    out = cli(w.cfg, "rebuild-index", "--json")
    assert '"skipped": []' in out.stdout, out.stdout
    w.start()
    try:
        with w.admin() as c:
            listed = {p["practice"]: p for p in c.get("/v1/admin/practices").json()}
            assert set(stored) <= set(listed)
            for name, exp in stored.items():
                st = c.get(f"/v1/admin/practices/{name}").json()
                assert st["snapshots"] == 3
                assert st["frozen"] is exp["attacked"]  # a suspicious snapshot found freezes the practice
                tok = c.post(f"/v1/admin/practices/{name}/tokens", json={"scope": "restore"}).json()["token"]
                b = w.backend(name, tok)
                assert {f.name for f in b.list(FileType.SNAPSHOT)} == set(exp["snaps"])
                for sname, data in exp["snaps"].items():
                    assert b.load(Handle(FileType.SNAPSHOT, sname)) == data
                assert b.exists(exp["ids"]) == {i.hex() for i in exp["ids"]}
                assert len(list(b.list(FileType.DATA))) == 3
                b.close()
            assert c.get("/v1/admin/audit/verify").json()["ok"]
    finally:
        w.stop()

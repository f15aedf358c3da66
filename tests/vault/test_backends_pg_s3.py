"""The vault on its other backends: PostgreSQL metadata (same code as SQLite) and S3 storage
with Object Lock COMPLIANCE on a real SeaweedFS, where the storage itself refuses deletion and
overwrite of what the vault accepted."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError

from rempart.core.clock import SystemClock
from rempart.core.errors import MissingBlobs
from rempart.storage.base import FileType, Handle
from rempart.vault import gc
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import parse_config

from .conftest import s3_vault
from .objects import make_pack, make_snapshot


def test_postgresql_metadata(postgres_dsn: str, tmp_path: Path) -> None:
    url = postgres_dsn if postgres_dsn.startswith("postgresql+psycopg") else \
        "postgresql+psycopg://" + postgres_dsn.split("://", 1)[1]
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 0},
                                 "database": {"url": url}}, tmp_path), SystemClock())
    assert v.engine.dialect.name == "postgresql"
    name = f"pg-{uuid.uuid4().hex[:8]}"
    ops.add_practice(v, name, actor="t")
    pk, ids = make_pack([10, 20])
    v.ingest("t", v.practice(name), Handle(FileType.DATA, pk.name), pk.data)
    s = make_snapshot(ids)
    v.ingest("t", v.practice(name), Handle(FileType.SNAPSHOT, s.name), s.data)
    with pytest.raises(MissingBlobs):
        bad = make_snapshot([*ids, b"\x01" * 32])
        v.ingest("t", v.practice(name), Handle(FileType.SNAPSHOT, bad.name), bad.data)
    garbage, _ = make_pack([5])
    v.ingest("t", v.practice(name), Handle(FileType.DATA, garbage.name), garbage.data)
    susp = make_snapshot(ids, verdict="suspicious")
    v.ingest("t", v.practice(name), Handle(FileType.SNAPSHOT, susp.name), susp.data)
    assert v.practice(name).frozen
    assert gc.run_gc(v, v.practice(name), actor="t").frozen
    ops.freeze(v, name, False, "ok", actor="t")
    rep = gc.run_gc(v, v.practice(name), actor="t")
    assert rep.deleted_packs == [garbage.name]
    assert v.exists(v.practice(name), ids) == set(ids)
    st = ops.status(v, v.practice(name))
    assert st["snapshots"] == 2 and st["last_clean_snapshot"] == s.name
    from rempart.vault.audit import verify

    assert verify(v.engine, v.config.audit_checkpoint).ok


def s3(seaweed: Any) -> Any:
    return boto3.client("s3", endpoint_url=seaweed.endpoint, region_name=seaweed.region,
                        aws_access_key_id=seaweed.admin.access_key, aws_secret_access_key=seaweed.admin.secret_key,
                        config=Config(s3={"addressing_style": "path"}))


def test_s3_object_lock_storage_refuses_deletion_and_overwrite(seaweed: Any, tmp_path: Path) -> None:
    bucket = f"vault-{uuid.uuid4().hex[:10]}"
    v = s3_vault(tmp_path / "v", seaweed, bucket)
    v.start()
    try:
        name, toks = v.add_practice()
        b = v.backend(name, toks["backup"])
        pk, ids = make_pack([1000, 2000])
        b.save(Handle(FileType.DATA, pk.name), pk.data)
        snap = make_snapshot(ids)
        b.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
        orphan, _ = make_pack([300])
        b.save(Handle(FileType.DATA, orphan.name), orphan.data)
        b.close()
        c = s3(seaweed)
        key = f"{name}/data/{pk.name}"
        head = c.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        version = head["VersionId"]
        # the storage itself refuses to delete the locked version, even with the vault's own credential
        with pytest.raises(ClientError):
            c.delete_object(Bucket=bucket, Key=key, VersionId=version)
        # an overwrite only adds a version: the accepted bytes stay intact under their version id
        c.put_object(Bucket=bucket, Key=key, Body=b"ransomware was here")
        assert c.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == pk.data
        # ...and the vault reads that accepted version, not the newer one: a restore token gets
        # the pack's bytes, and the scrub (re-reading every object from S3) finds nothing wrong
        snap_key = f"{name}/snapshots/{snap.name}"
        c.delete_object(Bucket=bucket, Key=snap_key)  # a delete marker over a locked snapshot
        rb = v.backend(name, toks["restore"])
        assert rb.load(Handle(FileType.DATA, pk.name)) == pk.data
        assert rb.load(Handle(FileType.DATA, pk.name), offset=10, length=100) == pk.data[10:110]
        assert rb.load(Handle(FileType.SNAPSHOT, snap.name)) == snap.data
        rb.close()
        out = subprocess.run([sys.executable, "-m", "rempart.cli.main", "--json", "vault", "scrub", "--practice",
                              name, "--config", str(v.cfg)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        (rep,) = json.loads(out.stdout)
        assert rep["damaged"] == [] and rep["objects"] == 3  # both packs and the snapshot, from S3
        # the vault's admin deletion path reaches the storage, which refuses (after min age 0)
        with v.admin() as a:
            assert a.put(f"/v1/admin/practices/{name}/policy", json={"min_age_days": 0, "keep_last": 0,
                         "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "yearly": 0}).status_code == 200
            r = a.delete(f"/v1/p/{name}/data/{orphan.name}")
            assert r.status_code == 403, r.text
            # GC wants to drop the orphan pack and the forgotten snapshot: storage keeps them locked
            rep = a.post(f"/v1/admin/practices/{name}/gc").json()
        assert rep["deleted_packs"] == 0
        versions = c.list_object_versions(Bucket=bucket, Prefix=f"{name}/data/{orphan.name}")["Versions"]
        assert versions, "the locked object must still exist in storage"
    finally:
        v.stop()

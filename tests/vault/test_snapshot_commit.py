"""A snapshot commit on SQLite (the driver's own queries for its refs): every reference checked
across several query chunks, exactly the missing ones named, every reference recorded once; the
same answers as SQLAlchemy's generic query. In-process vault (service layer, SQLite, local
storage)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from rempart.core.clock import FakeClock
from rempart.core.errors import MissingBlobs
from rempart.storage.base import FileType, Handle
from rempart.vault import db
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import parse_config
from rempart.vault.service import CHUNK

from .objects import make_pack, make_snapshot


def test_a_snapshot_of_many_refs_is_checked_and_recorded_exactly() -> None:
    d = Path(tempfile.mkdtemp(prefix="vault-snap-"))
    vault = open_vault(parse_config({"tls": {"enabled": False}}, d), FakeClock())
    assert vault.engine.dialect.name == "sqlite"
    ops.add_practice(vault, "cabinet", actor="test")
    p = vault.practice("cabinet")
    pk, ids = make_pack([40] * (2 * CHUNK + 37))
    vault.ingest("t", p, Handle(FileType.DATA, pk.name), pk.data)

    unknown = sorted(os.urandom(32) for _ in range(3))
    refs = sorted(ids[: 2 * CHUNK + 20] + unknown)  # the unknown ones spread over the chunks
    with pytest.raises(MissingBlobs) as err:
        vault.ingest("t", p, Handle(FileType.SNAPSHOT, make_snapshot(refs).name), make_snapshot(refs).data)
    assert sorted(err.value.missing) == sorted(u.hex() for u in unknown)

    with vault.engine.connect() as c:
        fast = vault.present_blobs(c, p.id, refs)
        generic = {r[0] for r in c.execute(sa.select(db.blobs.c.blob_id).where(
            db.blobs.c.practice_id == p.id, db.blobs.c.blob_id.in_(refs)))}
    assert fast == generic == set(ids[: 2 * CHUNK + 20])

    good = sorted(ids[1:])
    snap = make_snapshot(good)
    assert vault.ingest("t", p, Handle(FileType.SNAPSHOT, snap.name), snap.data) is True
    with vault.engine.connect() as c:
        rows = c.execute(sa.select(db.snapshot_refs.c.blob_id, db.snapshot_refs.c.practice_id).where(
            db.snapshot_refs.c.snapshot == snap.name)).all()
    assert sorted(r[0] for r in rows) == good  # each once
    assert {r[1] for r in rows} == {p.id}

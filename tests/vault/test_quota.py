"""Quota claims (rempart.vault.quota): an upload refused or failing after its claim gives the
room back; the racing uploads themselves are in test_api (a real vault process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rempart.core.clock import FakeClock
from rempart.core.errors import MissingBlobs, QuotaExceeded
from rempart.storage.base import FileType, Handle
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import parse_config

from .objects import make_pack, make_snapshot


def test_a_refused_upload_gives_its_claimed_room_back(tmp_path: Path) -> None:
    v = open_vault(parse_config({"tls": {"enabled": False}}, tmp_path), FakeClock())
    pk, ids = make_pack([5000])
    snap = make_snapshot([b"\x01" * 32])  # references a blob the vault does not hold
    ops.add_practice(v, "doc", actor="t", quota_bytes=len(pk.data) + len(snap.data))
    p = v.practice("doc")
    with pytest.raises(MissingBlobs):
        v.ingest("t", p, Handle(FileType.SNAPSHOT, snap.name), snap.data)
    assert v.quota.claimed(p.id) == 0
    assert v.ingest("t", p, Handle(FileType.DATA, pk.name), pk.data)  # the room is still there
    assert v.quota.claimed(p.id) == 0
    assert v.practice("doc").used_bytes == len(pk.data)
    other, _ = make_pack([5000])
    with pytest.raises(QuotaExceeded, match="over its storage quota"):
        v.ingest("t", v.practice("doc"), Handle(FileType.DATA, other.name), other.data)
    assert v.quota.claimed(p.id) == 0
    good = make_snapshot(ids)
    assert v.ingest("t", v.practice("doc"), Handle(FileType.SNAPSHOT, good.name), good.data)
    assert v.practice("doc").used_bytes == len(pk.data) + len(good.data)


def test_reupload_of_a_pack_marked_for_deletion_is_not_refused_at_a_full_quota(tmp_path: Path) -> None:
    """A pack GC marked "deleting" still counts in ``used_bytes``; uploading it again adds
    nothing, so a practice exactly at its quota may do it (its backup would fail otherwise)."""
    from rempart.vault import gc

    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "gc": {"grace_seconds": 3600}}, tmp_path), clock)
    pk, ids = make_pack([5000])
    ops.add_practice(v, "doc", actor="t", quota_bytes=len(pk.data))
    assert v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    clock.advance(2 * 3600)
    assert gc._mark(v, v.practice("doc"), actor="t", report=gc.GcReport("doc"))
    assert v.exists(v.practice("doc"), ids) == set()  # marked "deleting"
    assert v.practice("doc").used_bytes == len(pk.data)  # still stored, still counted: the quota is full
    assert v.ingest("t", v.practice("doc"), Handle(FileType.DATA, pk.name), pk.data)
    assert v.practice("doc").used_bytes == len(pk.data)
    assert v.quota.claimed(v.practice("doc").id) == 0
    assert v.exists(v.practice("doc"), ids) == set(ids)  # live again, offered for dedup

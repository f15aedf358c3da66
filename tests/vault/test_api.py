"""Behaviour of the vault API through VaultBackend against the real vault process."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rempart.core.errors import (
    AlreadyExists,
    AuthenticationError,
    IntegrityError,
    MissingBlobs,
    NotFound,
    QuotaExceeded,
    UserError,
)
from rempart.repository.format import parse_index
from rempart.storage.base import FileType, Handle
from rempart.storage.vaultclient import enroll, whoami

from .objects import make_config, make_index, make_pack, make_snapshot, sha


def D(name: str) -> Handle:
    return Handle(FileType.DATA, name)


def S(name: str) -> Handle:
    return Handle(FileType.SNAPSHOT, name)


def test_create_only_validation(vault: Any) -> None:
    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    pk, ids = make_pack([10, 20, 30])
    # the name must be the SHA-256 of the body
    with pytest.raises(IntegrityError):
        b.save(D("0" * 64), pk.data)
    # a body that is not a pack, even correctly named, is refused
    junk = os.urandom(500)
    with pytest.raises(IntegrityError):
        b.save(D(sha(junk)), junk)
    b.save(D(pk.name), pk.data)
    b.save(D(pk.name), pk.data)  # identical retry: harmless no-op
    assert [f.name for f in b.list(FileType.DATA)] == [pk.name]
    # an index naming a pack the vault does not hold is refused with the missing pack
    ghost, gids = make_pack([5])
    bad_idx = make_index([(ghost.name, gids, [5])])
    with pytest.raises(MissingBlobs) as ei:
        b.save(Handle(FileType.INDEX, bad_idx.name), bad_idx.data)
    assert ei.value.missing == [ghost.name]
    idx = make_index([(pk.name, ids, [10, 20, 30])])
    b.save(Handle(FileType.INDEX, idx.name), idx.data)
    assert [p.hex() for p, _ in parse_index(b.load(Handle(FileType.INDEX, idx.name)))] == [pk.name]
    # a snapshot is committed only if every referenced blob is stored
    missing = os.urandom(32)
    snap = make_snapshot([*ids, missing])
    with pytest.raises(MissingBlobs) as ei:
        b.save(S(snap.name), snap.data)
    assert ei.value.missing == [missing.hex()]
    assert list(b.list(FileType.SNAPSHOT)) == []
    with pytest.raises(NotFound):
        b.stat(S(snap.name))
    good = make_snapshot(ids)
    b.save(S(good.name), good.data)
    assert b.load(S(good.name)) == good.data
    # config: once; identical again is fine, different is AlreadyExists
    cfg = make_config()
    h = Handle(FileType.CONFIG, "config")
    b.save(h, cfg)
    b.save(h, cfg)
    with pytest.raises(AlreadyExists):
        b.save(h, make_config())
    assert b.load(h) == cfg
    assert b.exists([*ids, missing]) == {i.hex() for i in ids}
    b.close()


def test_suspicious_snapshot_freezes_until_admin_release(vault: Any) -> None:
    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    pk, ids = make_pack()
    b.save(D(pk.name), pk.data)
    b.save(S((s := make_snapshot(ids)).name), s.data)
    assert b.status()["frozen"] is False
    bad = make_snapshot(ids, verdict="suspicious")
    b.save(S(bad.name), bad.data)
    st = b.status()
    assert st["frozen"] is True and st["last_verdict"] == "suspicious"
    assert st["last_clean_snapshot"] == s.name
    # the practice's own tokens cannot release
    with vault.client(toks["backup"]) as c:
        assert c.post(f"/v1/admin/practices/{name}/release", json={}).status_code == 403
    with vault.admin() as c:
        r = c.post(f"/v1/admin/practices/{name}/release", json={"reason": "checked by IT"})
        assert r.status_code == 200
        recs = c.get("/v1/admin/audit", params={"after": 0, "limit": 1000}).json()
    assert b.status()["frozen"] is False
    assert any(r["action"] == "release" and r["practice"] == name and r["actor"].startswith("token:") for r in recs)
    assert any(r["action"] == "freeze" and r["practice"] == name and r["actor"] == "vault" for r in recs)
    b.close()


def test_runs_status_and_metrics(vault: Any) -> None:
    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    b.report_run("failed", error_class="SourceError", counts={"files": 3})
    st = b.status()
    assert st["last_run"]["outcome"] == "failed" and st["last_run"]["error_class"] == "SourceError"
    pk, ids = make_pack()
    b.save(D(pk.name), pk.data)
    b.save(S((s := make_snapshot(ids)).name), s.data)
    with vault.client() as c:
        assert c.get("/metrics").status_code == 401
    with vault.admin() as c:
        text = c.get("/metrics").text
    assert f'rempart_vault_practice_bytes_stored{{practice="{name}"}} {float(len(pk.data) + len(s.data))}' in text
    assert f'rempart_vault_practice_last_snapshot_age_seconds{{practice="{name}"}}' in text
    assert "rempart_vault_requests_total" in text
    b.close()


def test_enrollment_codes(own_vault: Any) -> None:
    v = own_vault
    v.cfg.write_text(v.cfg.read_text() + "\n[limits]\nenroll_code_ttl_seconds = 2\n")
    v.start()
    name, _ = v.add_practice()
    with v.admin() as c:
        code = c.post(f"/v1/admin/practices/{name}/enroll-codes").json()["code"]
        stale = c.post(f"/v1/admin/practices/{name}/enroll-codes").json()["code"]
    with pytest.raises(AuthenticationError, match="wrong"):
        enroll(v.url, code[:-1] + ("A" if code[-1] != "A" else "B"), pin=v.pin)
    token = enroll(v.url, code, pin=v.pin)
    assert whoami(v.url, token, pin=v.pin)["practice"] == name
    assert whoami(v.url, token, pin=v.pin)["scope"] == "backup"
    with pytest.raises(AuthenticationError, match="already used"):
        enroll(v.url, code, pin=v.pin)
    time.sleep(2.2)
    with pytest.raises(AuthenticationError, match="expired"):
        enroll(v.url, stale, pin=v.pin)
    b = v.backend(name, token)
    b.report_run("ok")
    b.close()


def test_quota_and_request_size(own_vault: Any) -> None:
    v = own_vault
    v.cfg.write_text(v.cfg.read_text() + "\n[limits]\nmax_request_bytes = 100000\ndefault_quota_bytes = 3000\n")
    v.start()
    name, toks = v.add_practice()
    b = v.backend(name, toks["backup"])
    big, _ = make_pack([150_000])
    with pytest.raises(UserError, match="larger than"):
        b.save(D(big.name), big.data)
    kept = []
    with pytest.raises(QuotaExceeded):
        for _ in range(20):
            pk, _ = make_pack([700])
            b.save(D(pk.name), pk.data)
            kept.append(pk)
    assert 2 <= len(kept) < 20
    # nothing was deleted to make room
    assert sorted(f.name for f in b.list(FileType.DATA)) == sorted(p.name for p in kept)
    reader = v.backend(name, toks["restore"])  # a backup token may not read blob bytes
    for p in kept:
        assert reader.load(D(p.name)) == p.data
    reader.close()
    with v.admin() as c:
        assert c.put(f"/v1/admin/practices/{name}/quota", json={"quota_bytes": 0}).status_code == 200
    pk, _ = make_pack([700])
    b.save(D(pk.name), pk.data)
    b.close()


def test_uploads_racing_for_the_last_room_never_overshoot_the_quota(own_vault: Any) -> None:
    """Eight packs uploaded at once by eight connections to a practice with room for three:
    exactly three are stored and counted, the others get QuotaExceeded. (Checking the recorded
    usage alone let uploads that arrived together all pass: each saw the others as unused.)"""
    v = own_vault
    v.start()
    packs = [make_pack([40_000])[0] for _ in range(8)]
    size = len(packs[0].data)
    assert all(len(p.data) == size for p in packs)
    name, toks = v.add_practice()
    with v.admin() as c:
        r = c.put(f"/v1/admin/practices/{name}/quota", json={"quota_bytes": 3 * size + size // 2})
        assert r.status_code == 200, r.text
    backends = [v.backend(name, toks["backup"]) for _ in packs]
    start = threading.Barrier(len(packs))

    def upload(i: int) -> str:
        start.wait()
        try:
            backends[i].save(D(packs[i].name), packs[i].data)
            return "stored"
        except QuotaExceeded:
            return "refused"

    with ThreadPoolExecutor(len(packs)) as pool:
        outcomes = list(pool.map(upload, range(len(packs))))
    assert sorted(outcomes) == ["refused"] * 5 + ["stored"] * 3
    stored = sorted(p.name for p, o in zip(packs, outcomes) if o == "stored")
    assert sorted(f.name for f in backends[0].list(FileType.DATA)) == stored
    with v.admin() as c:
        assert c.get(f"/v1/admin/practices/{name}").json()["used_bytes"] == 3 * size
    for b in backends:
        b.close()


def test_wrong_pin_is_refused_before_any_token_is_sent(vault: Any) -> None:
    name, toks = vault.add_practice()
    with pytest.raises(AuthenticationError, match="pinned"):
        vault.backend(name, toks["backup"], **{"pin": "00" * 32})


def test_ranged_pack_reads_are_ranged_requests(vault: Any) -> None:
    """The client asks for exactly the bytes it needs (no whole-pack cache): each ranged load is
    one request with exactly those bytes; a range past the end is an IntegrityError."""
    name, toks = vault.add_practice()
    w = vault.backend(name, toks["backup"])
    pk, _ = make_pack([1000] * 40)
    w.save(D(pk.name), pk.data)
    w.close()
    b = vault.backend(name, toks["restore"])
    before = b.requests
    for i in (3, 0, 39, 17):
        assert b.load(D(pk.name), offset=1000 * i, length=1000) == pk.data[1000 * i : 1000 * (i + 1)]
    assert b.load(D(pk.name), offset=5000, length=25_000) == pk.data[5000:30_000]
    assert b.requests - before == 5
    with pytest.raises(IntegrityError):
        b.load(D(pk.name), offset=len(pk.data) - 10, length=20)
    b.close()

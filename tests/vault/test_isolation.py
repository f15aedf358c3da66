"""Isolation matrix: every route of the published OpenAPI spec, tried with no token, each scope
of practice A, practice B's tokens, and the provider admin token, against practice A's data."""

from __future__ import annotations

import re
from typing import Any

import pytest

from rempart.storage.base import FileType, Handle

from .objects import make_pack, make_snapshot

#: (method, path template) -> scopes allowed; "any" = any valid token; "public" = no token needed
PRACTICE_READ = {"backup", "restore", "admin"}


def allowed(method: str, path: str) -> set[str]:
    if path in ("/v1/health", "/v1/enroll"):
        return {"public"}
    if path == "/metrics" or path.startswith("/v1/admin"):
        return {"admin"}
    if path == "/v1/whoami":
        return {"backup", "restore", "admin"}
    assert path.startswith("/v1/p/{practice}"), path
    if method == "DELETE":
        return {"admin"}
    if method == "POST" and path.endswith("/runs"):
        return {"backup"}
    if method == "POST" and path.endswith("/drills"):
        return {"restore", "admin"}  # a drill reads backups back: never with a backup token
    if method == "POST" and not path.endswith("/blobs/exists"):
        return {"backup", "admin"}
    if method == "GET" and path.endswith("/{type}/{name}"):
        return {"restore", "admin"}  # fill() names a data pack: a backup token reads headers only
    return PRACTICE_READ


@pytest.fixture(scope="module")
def world(vault: Any) -> dict[str, Any]:
    a, ta = vault.add_practice(min_age_days=0)
    b, tb = vault.add_practice(min_age_days=0)
    backend = vault.backend(a, ta["backup"])
    pk, ids = make_pack()
    backend.save(Handle(FileType.DATA, pk.name), pk.data)
    snap = make_snapshot(ids)
    backend.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
    backend.close()
    with vault.client() as c:
        spec = c.get("/openapi.json").json()
    return {"a": a, "b": b, "ta": ta, "tb": tb, "pack": pk, "snap": snap, "spec": spec}


def fill(path: str, w: dict[str, Any]) -> str:
    out = path.replace("{practice}", w["a"]).replace("{type}", "data").replace("{name}", w["pack"].name)
    out = out.replace("{token_id}", "0" * 12).replace("{approval}", "0" * 16).replace("{decision}", "approve")
    assert not re.search(r"\{", out), out
    return out


def test_every_route_with_every_credential(vault: Any, world: dict[str, Any]) -> None:
    w = world
    creds = {
        "none": None,
        "backup": w["ta"]["backup"],
        "restore": w["ta"]["restore"],
        "admin": vault.admin_token,
        "other-backup": w["tb"]["backup"],
        "other-restore": w["tb"]["restore"],
        "garbage": "rvt_0123456789ab_" + "x" * 43,
    }
    checked = 0
    for path, ops in w["spec"]["paths"].items():
        if not (path.startswith("/v1/") or path == "/metrics"):
            continue  # the dashboard's pages (rempart.vault.watch) have their own session tests
        for method in ops:
            m = method.upper()
            ok_scopes = allowed(m, path)
            url = fill(path, w)
            for who, tok in creds.items():
                # destructive calls that would succeed are exercised elsewhere; here only refusals
                if m in ("DELETE", "POST", "PUT") and who == "admin" and "admin" in ok_scopes:
                    continue
                with vault.client(tok) as c:
                    body = b"" if (m == "POST" and "{type}" in path) or path.endswith("/config") else None
                    kw: dict[str, Any] = {"content": body} if body is not None else {"json": {}}
                    if m in ("GET", "HEAD", "DELETE"):
                        kw = {}
                    r = c.request(m, url, **kw)
                scope = who.replace("other-", "")
                should = "public" in ok_scopes or (who in ok_scopes)
                if who.startswith("other-") and path.startswith("/v1/p/"):
                    should = False
                if who == "other-backup" and path == "/v1/whoami":
                    should = True
                if who.startswith("other-") and not path.startswith("/v1/p/") and "public" not in ok_scopes:
                    should = scope in ok_scopes
                if should:
                    assert r.status_code not in (401, 403), (m, path, who, r.status_code, r.text)
                else:
                    assert r.status_code in (401, 403), (m, path, who, r.status_code, r.text)
                checked += 1
    assert checked > 100
    # nothing of practice A changed: its pack and snapshot are intact and listed
    b = vault.backend(w["a"], w["ta"]["restore"])
    assert b.load(Handle(FileType.DATA, w["pack"].name)) == w["pack"].data
    assert [f.name for f in b.list(FileType.SNAPSHOT)] == [w["snap"].name]
    b.close()


def test_backup_token_cannot_delete_overwrite_or_rename(vault: Any, world: dict[str, Any]) -> None:
    w = world
    pk = w["pack"]
    with vault.client(w["ta"]["backup"]) as c:
        assert c.delete(f"/v1/p/{w['a']}/data/{pk.name}").status_code == 403
        assert c.delete(f"/v1/p/{w['a']}/snapshots/{w['snap'].name}").status_code == 403
        assert c.delete(f"/v1/p/{w['a']}/config").status_code == 403
        # overwrite with other bytes under the same name: refused (name must be the content hash)
        r = c.post(f"/v1/p/{w['a']}/data/{pk.name}", content=pk.data[:-1] + bytes([pk.data[-1] ^ 1]))
        assert r.status_code == 422
        # no rename/move/copy verbs exist at all
        for m in ("PUT", "PATCH", "MOVE", "COPY"):
            assert c.request(m, f"/v1/p/{w['a']}/data/{pk.name}").status_code in (403, 405)
        # no admin route
        assert c.post(f"/v1/admin/practices/{w['a']}/release", json={}).status_code == 403
        assert c.put(f"/v1/admin/practices/{w['a']}/policy", json={"keep_last": 0}).status_code == 403
    with vault.client(w["ta"]["restore"]) as c:
        assert c.get(f"/v1/p/{w['a']}/data/{pk.name}").content == pk.data


def test_refusals_are_audited(vault: Any, world: dict[str, Any]) -> None:
    with vault.admin() as c:
        before = c.get("/v1/admin/audit/verify").json()["count"]
    with vault.client(world["tb"]["backup"]) as c:
        assert c.get(f"/v1/p/{world['a']}/status").status_code == 403
    with vault.admin() as c:
        recs = c.get("/v1/admin/audit", params={"after": before}).json()
    assert any(r["practice"] == world["a"] and r["outcome"] == "permission-denied" for r in recs)
    assert all("rvt_" not in str(r) for r in recs)  # tokens never logged

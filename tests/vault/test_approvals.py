"""Two-person rule (``[limits] two_person = true``): a release, a policy change, a deletion asked
with one admin token waits for a second admin token (real vault process; expiry in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rempart.core.clock import FakeClock
from rempart.core.errors import NotFound
from rempart.storage.base import FileType, Handle
from rempart.vault import approvals
from rempart.vault import practices as ops
from rempart.vault.bootstrap import open_vault
from rempart.vault.config import parse_config

from .conftest import cli, make_vault
from .objects import make_pack, make_snapshot


def test_a_second_admin_token_must_approve_what_can_lead_to_deletion(tmp_path: Path) -> None:
    v = make_vault(tmp_path / "v", "[limits]\ntwo_person = true")
    second = cli(v.cfg, "admin-token").stdout.strip().splitlines()[-1]
    v.start()
    try:
        name, toks = v.add_practice()
        b = v.backend(name, toks["backup"])
        pk, ids = make_pack([1000])
        b.save(Handle(FileType.DATA, pk.name), pk.data)
        snap = make_snapshot(ids)
        b.save(Handle(FileType.SNAPSHOT, snap.name), snap.data)
        orphan, _ = make_pack([300])
        b.save(Handle(FileType.DATA, orphan.name), orphan.data)
        b.close()
        base = f"/v1/admin/practices/{name}"
        with v.admin() as a, v.client(second) as z:
            assert a.post(f"{base}/freeze", json={"reason": "drill"}).status_code == 200  # no approval to protect
            r = a.post(f"{base}/release", json={"reason": "all clear"})
            assert r.status_code == 202 and r.json()["state"] == "pending"
            aid = r.json()["approval"]
            assert a.get(base).json()["frozen"] is True  # nothing happened yet
            assert [p["approval"] for p in z.get("/v1/admin/approvals").json()] == [aid]
            assert a.post(f"/v1/admin/approvals/{aid}/approve").status_code == 403  # not by the requester
            r = z.post(f"/v1/admin/approvals/{aid}/approve")
            assert r.status_code == 200 and r.json()["state"] == "approved"
            assert a.get(base).json()["frozen"] is False
            assert z.post(f"/v1/admin/approvals/{aid}/approve").status_code == 404  # once

            r = a.put(f"{base}/policy", json={"keep_last": 0, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0,
                                             "yearly": 0, "min_age_days": 0})
            assert r.status_code == 202
            assert z.post(f"/v1/admin/approvals/{r.json()['approval']}/reject").json()["state"] == "rejected"
            assert a.get(base).json()["policy"]["min_age_days"] == 30  # unchanged

            r = a.delete(f"/v1/p/{name}/data/{orphan.name}")
            assert r.status_code == 202
            refused = z.post(f"/v1/admin/approvals/{r.json()['approval']}/approve")
            assert refused.status_code == 403 and "minimum age" in refused.text  # the usual rules still apply
            assert a.get("/v1/admin/approvals").json() == []
        # the vault's own CLI, on its host, is outside the rule
        cli(v.cfg, "practice", "policy", name, "--min-age-days", "0")
        with v.admin() as a, v.client(second) as z:
            r = a.delete(f"/v1/p/{name}/data/{orphan.name}")
            assert z.post(f"/v1/admin/approvals/{r.json()['approval']}/approve").status_code == 200
            assert a.get(f"/v1/p/{name}/data/{orphan.name}").status_code == 404
        actors = {r["action"]: r["actor"] for r in audit_actions_all(v) if r["practice"] == name}
        assert actors["release"].count("+token:") == 1 and actors["remove.data"].count("+token:") == 1
        assert "approval.reject" in actors and "approval.grant" in actors
    finally:
        v.stop()


def audit_actions_all(v: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    with v.admin() as c:
        while page := c.get("/v1/admin/audit", params={"after": after, "limit": 1000}).json():
            out += page
            after = page[-1]["seq"]
    return out


def test_a_request_expires_unapproved(tmp_path: Path) -> None:
    clock = FakeClock()
    v = open_vault(parse_config({"tls": {"enabled": False}, "limits": {"two_person": True}}, tmp_path), clock)
    ops.add_practice(v, "doc", actor="t")
    ops.freeze(v, "doc", True, "x", actor="t")
    req = approvals.request(v, "token:a", "release", "doc", {"reason": "ok"})
    clock.advance(approvals.TTL + 1)
    assert approvals.pending(v) == []
    with pytest.raises(NotFound):
        approvals.decide(v, req["approval"], "token:b", approve=True)
    assert v.practice("doc").frozen

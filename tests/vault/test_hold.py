"""Legal holds through the real vault process: the admin route and the CLI put and release a
hold; while held, the vault's GC keeps a snapshot its policy would forget; refusals are clear."""

from __future__ import annotations

import json
from typing import Any

from rempart.storage.base import FileType, Handle

from .conftest import cli
from .objects import make_pack, make_snapshot


def test_hold_through_the_api_and_the_cli(vault: Any) -> None:
    name, toks = vault.add_practice(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0, min_age_days=0)
    b = vault.backend(name, toks["backup"])
    snaps = []
    for size in (1000, 2000):
        pk, ids = make_pack([size])
        b.save(Handle(FileType.DATA, pk.name), pk.data)
        s = make_snapshot(ids)
        b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
        snaps.append(s.name)
    b.close()
    old, new = snaps
    url = f"/v1/admin/practices/{name}/snapshots/{old}"
    with vault.admin() as c:
        assert c.post(f"{url}/hold", json={"reason": ""}).status_code == 422  # a hold needs a reason
        r = c.post(f"{url}/hold", json={"reason": "court order 42"})
        assert r.status_code == 200 and r.json() == {"hold": True}
        r = c.post(f"/v1/admin/practices/{name}/snapshots/{'0' * 64}/hold", json={"reason": "x"})
        assert r.status_code == 404
        # keep_last=1 and no minimum age: GC would forget the older snapshot, the hold keeps it
        gc = c.post(f"/v1/admin/practices/{name}/gc").json()
        assert gc["forgotten"] == 0 and gc["deleted_packs"] == 0
    with vault.client(toks["restore"]) as c:
        held = {t["name"]: t["hold"] for t in c.get(f"/v1/p/{name}/timeline").json()}
    assert held == {old: "court order 42", new: None}

    # the CLI takes the short id that `rempart snapshots` shows
    out = cli(vault.cfg, "practice", "release-hold", name, old[:8], "--reason", "order lifted", "--json")
    assert json.loads(out.stdout) == {"snapshot": old, "hold": False}
    again = cli(vault.cfg, "practice", "release-hold", name, old[:8], check=False)
    assert again.returncode != 0 and "not under legal hold" in again.stderr
    with vault.admin() as c:
        gc = c.post(f"/v1/admin/practices/{name}/gc").json()
        assert gc["forgotten"] == 1
        log, after = [], 0
        while page := c.get("/v1/admin/audit", params={"after": after, "limit": 1000}).json():
            log += [e for e in page if e["practice"] == name and e["action"] in ("snapshot.hold", "snapshot.release-hold")]
            after = page[-1]["seq"]
    assert [e["action"] for e in log] == ["snapshot.hold", "snapshot.release-hold"]
    refused = cli(vault.cfg, "practice", "hold", name, old[:8], "--reason", "too late", check=False)
    assert refused.returncode != 0 and "already forgotten" in refused.stderr

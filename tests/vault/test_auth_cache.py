"""The vault's short-lived auth/stat caches: revocation still takes effect within seconds,
failures are never cached (and still audited), the cache answers hot routes."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from rempart.vault.authcache import AUTH_TTL, TtlCache


def test_ttl_cache_expires_and_clears() -> None:
    now = [100.0]
    c: TtlCache[int] = TtlCache(lambda: now[0], ttl=2.0, max_entries=3)
    c.put("a", 1)
    assert c.get("a") == 1
    now[0] += 1.9
    assert c.get("a") == 1
    now[0] += 0.2
    assert c.get("a") is None
    c.put("a", 1)
    c.put("b", 2)
    c.discard("a")
    assert c.get("a") is None and c.get("b") == 2
    c.clear()
    assert c.get("b") is None
    for k in ("x", "y", "z", "w"):  # bounded: never grows past max_entries
        c.put(k, 0)
    assert len(c._data) <= 3


def _token_id(token: str) -> str:
    return token[len("rvt_"):].split("_", 1)[0]


def test_revocation_through_admin_route_is_immediate(vault: Any) -> None:
    name, toks = vault.add_practice()
    with vault.client(toks["backup"]) as c:
        for _ in range(3):  # warm the cache
            assert c.get(f"/v1/p/{name}/data/").status_code == 200
        with vault.admin() as a:
            assert a.delete(f"/v1/admin/tokens/{_token_id(toks['backup'])}").status_code == 200
        assert c.get(f"/v1/p/{name}/data/").status_code == 401
        assert c.get(f"/v1/p/{name}/data/{'0' * 64}").status_code == 401
    with vault.client(toks["restore"]) as c:  # the practice's other token is unaffected
        assert c.get(f"/v1/p/{name}/data/").status_code == 200


def test_revocation_written_by_another_process_takes_effect_within_ttl(vault: Any) -> None:
    name, toks = vault.add_practice()
    with vault.client(toks["restore"]) as c:
        assert c.get(f"/v1/p/{name}/data/").status_code == 200
        # another process (e.g. `rempart vault` CLI on the same database) revokes it
        with sqlite3.connect(vault.root / "data" / "vault.db") as db:
            db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (_token_id(toks["restore"]),))
        t0 = time.monotonic()
        while c.get(f"/v1/p/{name}/data/").status_code == 200:
            assert time.monotonic() - t0 < AUTH_TTL + 1.5, "revocation not effective within the cache TTL"
            time.sleep(0.1)
        assert c.get(f"/v1/p/{name}/data/").status_code == 401


def test_wrong_tokens_are_not_cached_and_are_audited(vault: Any) -> None:
    name, toks = vault.add_practice()
    bad = toks["backup"][:-4] + ("AAAA" if not toks["backup"].endswith("AAAA") else "BBBB")
    with vault.client(toks["backup"]) as good:
        assert good.get(f"/v1/p/{name}/data/").status_code == 200
    with vault.admin() as a:
        before = a.get("/metrics").text
    with vault.client(bad) as c:
        for _ in range(3):
            assert c.get(f"/v1/p/{name}/data/").status_code == 401
    with vault.admin() as a:
        after = a.get("/metrics").text

    def failures(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("rempart_vault_auth_failures_total"))

    assert failures(after) - failures(before) == 3
    with sqlite3.connect(vault.root / "data" / "vault.db") as db:
        refused = db.execute("SELECT count(*) FROM audit WHERE practice = ? AND outcome != 'ok'", (name,)).fetchone()[0]
    assert refused >= 3

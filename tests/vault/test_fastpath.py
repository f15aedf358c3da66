"""The direct path for the hot object routes (rempart.vault.fastpath) answers exactly as the
FastAPI routes do: the same script of requests against an app with the fast path and one
without gives the same statuses, bodies, headers, stored objects, audit trail and request
metrics, and the fast app did answer the object requests itself."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rempart.core.clock import FakeClock
from rempart.vault import db
from rempart.vault import practices as ops
from rempart.vault.app import create_app
from rempart.vault.config import parse_config

from .objects import make_index, make_pack, make_snapshot, sha

LIMIT = 1_000_000


def _script(app: Any, pk: Any, ids: list[bytes], big: Any, idx: Any, snap: Any, large: Any) -> list[tuple[Any, ...]]:
    v = app.state.vault
    toks = ops.add_practice(v, "doc", actor="t")
    other = ops.add_practice(v, "other", actor="t")
    c = TestClient(app, client=("198.51.100.7", 4000))

    def h(tok: str | None, **extra: str) -> dict[str, str]:
        out = {"Authorization": f"Bearer {tok}"} if tok else {}
        return out | extra

    data = f"/v1/p/doc/data/{pk.name}"
    steps = [
        c.post(data, content=pk.data, headers=h(toks["backup"])),  # created
        c.post(data, content=pk.data, headers=h(toks["backup"])),  # same bytes: no-op
        c.post(f"/v1/p/doc/data/{sha(b'x')}", content=pk.data, headers=h(toks["backup"])),  # wrong name
        c.post(f"/v1/p/doc/data/{big.name}", content=big.data, headers=h(toks["backup"])),  # too large
        c.post(data, content=pk.data, headers=h(toks["restore"])),  # scope
        c.post(data, content=pk.data, headers=h(other["backup"])),  # another practice's token
        c.post(data, content=pk.data, headers=h(None)),  # no token
        c.post(data, content=pk.data, headers=h("rvt_000000000000_nope")),  # wrong token
        c.post(f"/v1/p/doc/snapshots/{snap.name}", content=bytes(snap.data), headers=h(toks["backup"])),  # its blobs are stored
        c.post(f"/v1/p/doc/index/{idx.name}", content=bytes(idx.data), headers=h(toks["backup"])),
        c.post(f"/v1/p/doc/data/{sha(b'not a pack')}", content=b"not a pack", headers=h(toks["backup"])),  # unparsable
        c.get(data, headers=h(toks["restore"], Range="bytes=1000-3999")),
        c.get(data, headers=h(toks["restore"])),
        c.get(data, headers=h(toks["restore"], Range="bytes=999999-")),  # beyond the end
        c.get(data, headers=h(toks["backup"], Range="bytes=0-99")),  # backup token: blobs refused
        c.get(data, headers=h(toks["backup"], Range=f"bytes={len(pk.data) - 8}-")),  # header tail: allowed
        c.get(data, headers=h(other["restore"])),
        c.get(f"/v1/p/doc/data/{sha(b'absent')}", headers=h(toks["restore"])),
        c.get(f"/v1/p/doc/index/{idx.name}", headers=h(toks["restore"])),
        c.head(data, headers=h(toks["restore"])),
        c.head(data, headers=h(None)),
        # bodies larger than the fast path's send slices
        c.post(f"/v1/p/doc/data/{large.name}", content=large.data, headers=h(toks["backup"])),
        c.get(f"/v1/p/doc/data/{large.name}", headers=h(toks["restore"])),
        c.get(f"/v1/p/doc/data/{large.name}", headers=h(toks["restore"], Range="bytes=100-650099")),
        c.get("/v1/p/doc/data/NOT-HEX", headers=h(toks["restore"])),  # left to FastAPI: 422
        c.get(f"/v1/p/doc/locks/{pk.name}", headers=h(toks["restore"])),  # not an object type: 422
    ]
    out: list[tuple[Any, ...]] = []
    for r in steps:
        json_body = r.content and r.headers.get("content-type", "").startswith("application/json")
        body = r.json() if json_body else r.content
        if isinstance(body, dict) and "detail" in body and isinstance(body["detail"], list):
            body = {"detail": [d.get("type") for d in body["detail"]]}  # FastAPI's 422 (same app code)
        hdrs = {k: r.headers.get(k) for k in ("content-range", "content-length", "accept-ranges", "retry-after")}
        out.append((r.status_code, body, hdrs))
    with v.engine.connect() as conn:
        audit = [(a.action, a.practice, a.outcome, json.loads(a.detail or "{}").get("name"))
                 for a in conn.execute(sa.select(db.audit).order_by(db.audit.c.seq))]
        objects = sorted((o.type, o.name, o.size, o.state) for o in conn.execute(sa.select(db.objects)))
        used = conn.execute(sa.select(db.practices.c.used_bytes).where(db.practices.c.name == "doc")).scalar()
    counts = sorted((s.labels["method"], s.labels["route"], s.labels["status"], s.value)
                    for m in app.state.metrics.requests.collect() for s in m.samples if s.name.endswith("_total"))
    return [*out, ("audit", audit), ("objects", objects, used), ("requests", counts)]


def test_fast_path_answers_as_fastapi_does(tmp_path: Path) -> None:
    pk, ids = make_pack([1000, 3000])
    big, _ = make_pack([LIMIT])
    idx = make_index([(pk.name, ids, [1000, 3000])])
    snap = make_snapshot(ids)
    large, _ = make_pack([400_000, 300_000])
    results = []
    apps = []
    for fast in (True, False):
        cfg = parse_config({"tls": {"enabled": False}, "limits": {"max_request_bytes": LIMIT}},
                           tmp_path / str(fast))
        app = create_app(cfg, FakeClock(), fast_objects=fast)
        apps.append(app)
        results.append(_script(app, pk, ids, big, idx, snap, large))
    fast_r, slow_r = results
    for i, (a, b) in enumerate(zip(fast_r, slow_r)):
        assert a == b, f"step {i}: fast path {a!r} != FastAPI {b!r}"
    statuses = [r[0] for r in fast_r[:26]]
    assert statuses == [201, 200, 422, 413, 403, 403, 401, 401, 201, 201, 422, 206, 200, 416, 403, 206,
                        403, 404, 200, 200, 401, 201, 200, 206, 422, 422]
    assert fast_r[22][1] == large.data and fast_r[23][1] == large.data[100:650_100]
    assert fast_r[23][2]["content-length"] == "650000"
    assert fast_r[11][1] == pk.data[1000:4000] and fast_r[11][2]["content-range"] == f"bytes 1000-3999/{len(pk.data)}"
    assert fast_r[19][2]["content-length"] == str(len(pk.data))
    # the refusals are in the audit trail (same entries both ways, checked above)
    outcomes = [e[2] for e in fast_r[26][1] if not e[0].startswith(("practice", "token"))]
    assert outcomes.count("ok") >= 3 and "permission-denied" in outcomes and "integrity-error" in outcomes
    assert "request-too-large" in outcomes and "authentication-failed" in outcomes
    # the fast app answered every well-formed object request itself, the other one none
    assert apps[0].fast is not None and apps[0].fast.handled == 24
    assert apps[1].fast is None


def test_upload_cut_off_stores_nothing_and_logs_no_error(own_vault: Any) -> None:
    """A client that drops the connection half-way through a pack upload (real vault process):
    nothing becomes visible, the vault keeps serving, and no traceback goes to its log."""
    import socket
    import ssl

    from rempart.core.errors import NotFound
    from rempart.storage.base import FileType, Handle

    own_vault.start()
    name, toks = own_vault.add_practice()
    pk, _ = make_pack([300_000, 300_000])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", own_vault.port)) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(f"POST /v1/p/{name}/data/{pk.name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {toks['backup']}"
                  f"\r\nContent-Length: {len(pk.data)}\r\n\r\n".encode())
        s.sendall(pk.data[: len(pk.data) // 2])
    b = own_vault.backend(name, toks["backup"])
    h = Handle(FileType.DATA, pk.name)
    tmp = own_vault.root / "data" / "storage" / name / "tmp"
    try:
        with pytest.raises(NotFound):
            b.stat(h)
        deadline = time.monotonic() + 20  # the vault notices the disconnect on its own time
        while any(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(tmp.iterdir()), "the cut-off upload's temporary file was left"
        b.save(h, pk.data)  # the retry completes
        assert b.stat(h).size == len(pk.data)
    finally:
        b.close()
    log = own_vault.log.read_text()
    assert "ClientDisconnect" not in log and "Traceback" not in log

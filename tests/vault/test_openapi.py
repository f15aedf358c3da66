"""The OpenAPI document is current, and a bounded schemathesis fuzz run against the real vault
finds no server error and no state change from a rejected request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from rempart.storage.base import FileType, Handle
from rempart.vault import db
from rempart.vault.openapi import build_spec, render

from .objects import make_pack, make_snapshot

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
schema = schemathesis.openapi.from_dict(json.loads(DOC.read_text()))


def test_checked_in_spec_is_current() -> None:
    assert DOC.read_text() == render(build_spec()), \
        "docs/openapi.json is stale: run python -m rempart.vault.openapi docs/openapi.json"


def test_served_spec_matches(vault: Any) -> None:
    with vault.client() as c:
        served = c.get("/openapi.json").json()
    assert set(json.loads(DOC.read_text())["paths"]) <= set(served["paths"])


@pytest.fixture(scope="module")
def fuzz_world(vault: Any) -> Iterator[dict[str, Any]]:
    name, toks = vault.add_practice("fuzz")
    b = vault.backend(name, toks["backup"])
    pk, ids = make_pack()
    b.save(Handle(FileType.DATA, pk.name), pk.data)
    s = make_snapshot(ids)
    b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
    b.close()
    session = requests.Session()
    session.verify = str(vault.root / "data" / "tls" / "cert.pem")
    session.headers["Authorization"] = f"Bearer {toks['backup']}"
    engine = sa.create_engine(f"sqlite:///{vault.root / 'data' / 'vault.db'}")
    yield {"name": name, "tokens": toks, "pack": pk.name, "session": session, "engine": engine}
    engine.dispose()
    session.close()


def state(engine: Any) -> Any:
    """Every row a request could change (the audit trail excepted: refusals are recorded there)."""
    out = {}
    with engine.connect() as c:
        for t in (db.practices, db.tokens, db.enroll_codes, db.objects, db.blobs, db.snapshots, db.runs):
            out[t.name] = sorted(tuple(str(x) for x in r) for r in c.execute(sa.select(t)))
    return out


@schema.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzz_no_5xx_no_change_when_rejected(case: Any, vault: Any, fuzz_world: dict[str, Any]) -> None:
    # most requests target the fuzz practice with its backup token (the ransomware's credential)
    if "practice" in (case.path_parameters or {}):
        case.path_parameters["practice"] = fuzz_world["name"]
    before = state(fuzz_world["engine"])
    resp = case.call(base_url=vault.url, session=fuzz_world["session"], verify=fuzz_world["session"].verify,
                     timeout=30)
    assert resp.status_code < 500, (case.method, case.path, resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        assert state(fuzz_world["engine"]) == before, (case.method, case.path, resp.status_code)

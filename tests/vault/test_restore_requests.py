"""How many requests a restore through a REAL vault spends on each pack's key envelope: one
ranged read where the index says the header begins (no HEAD, no trailer read), counted at the
vault; a stale index hint (the pack's last blob indexed elsewhere, or an offset past the end)
falls back to the trailer and still yields the right key; a pack whose envelope cannot be read
fails the restore of its files, naming one, without hanging."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rempart.core.errors import RempartError
from rempart.crypto.kit import decrypt_kit
from rempart.repository.format import PackEntry
from rempart.repository.index import BlobIndex
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository
from rempart.snapshot.restorer import Restorer
from rempart.storage.base import FileType, Handle

from .cabinet import PASS, back_up_cabinet, rempart

OBJECT = "/v1/p/{practice}/{type}/{name}"


def counters(vault: Any) -> dict[str, float]:
    """From the vault's metrics: object requests by method, and data reads by kind, once they
    have settled (a request is counted just after its answer is sent)."""
    last = _counters(vault)
    for _ in range(50):
        time.sleep(0.05)
        now = _counters(vault)
        if now == last:
            break
        last = now
    return last


def _counters(vault: Any) -> dict[str, float]:
    with vault.admin() as c:
        text = c.get("/metrics").text
    out: dict[str, float] = {}
    for m in re.finditer(r"^rempart_vault_requests_total\{(.*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["route"] == OBJECT:
            out[labels["method"]] = out.get(labels["method"], 0) + float(m.group(2))
    for m in re.finditer(r"^rempart_vault_reads_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["type"] == "data":
            out[f"data-{labels['read']}"] = float(m.group(2))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


@pytest.fixture
def backed_up(own_vault: Any, tmp_path: Path) -> tuple[Any, str, dict[str, str], Path]:
    """A vault holding a snapshot of ~7 MiB in packs of 1 MiB (several packs)."""
    name, _, env, _ = back_up_cabinet(own_vault, tmp_path, seed=11, folders=4, files=60, sizes=(500, 20000),
                                      init=("--pack-size", "1"), backup=("--no-detect",))
    return own_vault, name, env, tmp_path / "kit"


def _session(vault: Any, name: str, token: str, kit: Path) -> ReadSession:
    repo = Repository.open(vault.backend(name, token))
    repo.load_index()
    return ReadSession(repo, decrypt_kit(kit.read_bytes(), PASS).private_key, max_gap=256 * 1024, readahead=2)


def _packs(session: ReadSession) -> list[bytes]:
    return [bytes.fromhex(fi.name) for fi in session.repo.backend.list(FileType.DATA)]


def _a_blob_of(session: ReadSession, pack: bytes) -> bytes:
    return next(bid for bid, loc in session.repo.index.items() if loc.pack == pack)


def test_each_pack_key_costs_one_ranged_read_at_the_vault(backed_up: Any) -> None:
    vault, name, env, kit = backed_up
    session = _session(vault, name, env["REMPART_VAULT_TOKEN"], kit)
    packs = _packs(session)
    assert len(packs) >= 5
    backend = session.repo.backend
    for pack in packs:
        before, sent = counters(vault), backend.requests  # type: ignore[attr-defined]
        key = session.pack_key(pack)
        assert backend.requests - sent == 1  # type: ignore[attr-defined]
        assert delta(counters(vault), before) == {"GET": 1, "data-range": 1}  # no HEAD, no trailer read
        blob = _a_blob_of(session, pack)
        assert session.load_blob(blob, verify=True)  # the key opens this pack's blobs
        assert session.pack_key(pack) is key  # read once


def _stale(session: ReadSession, pack: bytes, entries: list[PackEntry]) -> None:
    """The session's index knows ``pack`` only through ``entries`` (a real, stale index)."""
    index = BlobIndex()
    index.add_pack(pack, entries)
    session.repo.index = index


@pytest.mark.parametrize("hint", ["last blob indexed elsewhere", "past the end"])
def test_a_stale_index_hint_falls_back_to_the_trailer(backed_up: Any, hint: str) -> None:
    vault, name, env, kit = backed_up
    session = _session(vault, name, env["REMPART_VAULT_TOKEN"], kit)
    pack = max(_packs(session), key=lambda p: len(session.repo.read_pack_header(p.hex()).entries))
    entries = list(session.repo.read_pack_header(pack.hex()).entries)
    entries.sort(key=lambda e: e.offset)
    assert len(entries) >= 2
    size = session.repo.backend.stat(Handle(FileType.DATA, pack.hex())).size
    if hint == "past the end":
        entries[-1] = PackEntry(entries[-1].type, entries[-1].id, size + 100, entries[-1].length)
    else:
        entries = entries[:-1]  # the header no longer begins where the index's blobs end
    _stale(session, pack, entries)
    before = counters(vault)
    key = session.pack_key(pack)
    # the hinted read, then HEAD, trailer and header as without a hint
    got = delta(counters(vault), before)
    assert got.get("HEAD") == 1 and got.get("GET") == 3, got
    assert session.load_blob(entries[0].id, verify=True)
    assert session.pack_key(pack) is key


def test_a_restore_reads_no_pack_twice_for_its_key(backed_up: Any, tmp_path: Path) -> None:
    """A whole restore (CLI): no HEAD of a pack, at most one envelope read per pack plus the runs."""
    vault, name, env, kit = backed_up
    session = _session(vault, name, env["REMPART_VAULT_TOKEN"], kit)
    packs = _packs(session)
    blobs = sum(len(session.repo.read_pack_header(p.hex()).entries) for p in packs)
    before = counters(vault)
    r = rempart(f"{vault.url}/{name}", env, "restore", "latest", "--target", str(tmp_path / "out"), "--kit", str(kit))
    assert r.returncode == 0, r.stderr
    got = delta(counters(vault), before)
    assert "HEAD" not in got, got
    assert got.get("data-whole", 0) == 0
    # runs of neighbouring blobs (far fewer than blobs), plus one envelope read per pack
    assert 0 < got["data-range"] <= blobs / 10 + len(packs), (got, blobs, len(packs))


def test_a_pack_whose_envelope_cannot_be_read_fails_its_files(backed_up: Any, tmp_path: Path) -> None:
    vault, name, env, kit = backed_up
    session = _session(vault, name, env["REMPART_VAULT_TOKEN"], kit)
    snap = sorted(session.repo.list_snapshots(), key=lambda s: str(s[1].plain["time"]))[-1][1]
    restorer = Restorer(session)
    tree_packs = {loc.pack for _, loc in session.repo.index.items() if loc.type.name == "TREE"}
    victim = next(p for p in _packs(session) if p not in tree_packs)
    for p in (vault.root / "data").rglob(f"*{victim.hex()}*"):
        if p.is_file():
            os.chmod(p, 0o600)
            p.unlink()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            restorer.restore(snap.tree, tmp_path / "out")
            outcome.append(None)
        except BaseException as exc:  # checked below
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the restore hung"
    err = outcome[0]
    assert isinstance(err, RempartError), err
    assert ": cannot restore:" in str(err) and "not found" in str(err), err
    assert restorer.stats.processes >= 2
    assert env["REMPART_VAULT_TOKEN"] not in str(err)
    named = str(err).split(": cannot restore:")[0]
    assert not (tmp_path / "out" / named).exists()

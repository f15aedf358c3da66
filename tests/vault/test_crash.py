"""The vault process killed with SIGKILL during uploads and during GC: after a restart no
accepted snapshot is lost or unreadable and the index matches storage."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rempart.core.errors import RempartError
from rempart.storage.base import FileType, Handle

from .conftest import cli
from .objects import garbage_and_one_snapshot, make_pack, make_snapshot


def storage_names(v: Any, practice: str, ftype: FileType) -> set[str]:
    root = v.root / "data" / "storage" / practice / ftype.value
    return {p.name for p in root.rglob("*") if p.is_file() and len(p.name) == 64}


def check_consistent(v: Any, practice: str, token: str, accepted: dict[str, bytes], *, exact: bool) -> None:
    b = v.backend(practice, token)
    listed = {t: {f.name for f in b.list(t)} for t in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT)}
    for t, names in listed.items():
        stored = storage_names(v, practice, t)
        assert names <= stored, f"{t.value}: listed but not stored: {names - stored}"
        if exact:
            assert names == stored, f"{t.value}: stored but not indexed: {stored - names}"
        for n in names:  # every listed object is readable
            b.stat(Handle(t, n))
    for name, data in accepted.items():
        assert name in listed[FileType.SNAPSHOT], "an accepted snapshot was lost"
        assert b.load(Handle(FileType.SNAPSHOT, name)) == data
    b.close()


def uploader(v: Any, practice: str, token: str, accepted: dict[str, bytes], stop: threading.Event) -> None:
    try:
        b = v.backend(practice, token, attempts=1)
    except RempartError:
        return
    while not stop.is_set():
        try:
            pk, ids = make_pack([20_000, 30_000, 1_000])
            b.save(Handle(FileType.DATA, pk.name), pk.data)
            s = make_snapshot(ids)
            b.save(Handle(FileType.SNAPSHOT, s.name), s.data)
            accepted[s.name] = s.data  # only after the vault acknowledged it
        except RempartError:
            time.sleep(0.05)
    b.close()


def test_sigkill_during_uploads(own_vault: Any) -> None:
    v = own_vault
    v.start()
    name, toks = v.add_practice()
    accepted: dict[str, bytes] = {}
    for round_ in range(2):
        stop = threading.Event()
        ts = [threading.Thread(target=uploader, args=(v, name, toks["backup"], accepted, stop)) for _ in range(3)]
        for t in ts:
            t.start()
        time.sleep(1.0 + 0.4 * round_)
        v.kill()  # SIGKILL in the middle of uploads
        stop.set()
        for t in ts:
            t.join(timeout=30)
        v.start()
        check_consistent(v, name, toks["restore"], accepted, exact=True)
    assert len(accepted) >= 2


@pytest.mark.slow
def test_sigkill_during_gc(own_vault: Any) -> None:
    v = own_vault
    v.start()
    name, toks = v.add_practice(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0, yearly=0, min_age_days=0)
    b = v.backend(name, toks["backup"])
    s, keep, ids = garbage_and_one_snapshot(b, 150)
    b.close()
    with v.admin() as c:
        def trigger() -> None:
            try:
                c.post(f"/v1/admin/practices/{name}/gc", timeout=120)
            except httpx.TransportError:
                pass  # the vault was killed under us: expected

        before = len(storage_names(v, name, FileType.DATA))
        t = threading.Thread(target=trigger)
        t.start()
        deadline = time.monotonic() + 60  # as soon as the collection has removed a first pack
        while len(storage_names(v, name, FileType.DATA)) == before and time.monotonic() < deadline:
            time.sleep(0.001)
        v.kill()  # SIGKILL in the middle of GC
        t.join(timeout=60)
    left = len(storage_names(v, name, FileType.DATA))
    assert 1 < left < before, (left, before)  # the kill did interrupt the collection
    v.start()
    check_consistent(v, name, toks["restore"], {s.name: s.data}, exact=False)
    b = v.backend(name, toks["restore"])
    assert b.exists(ids) == {i.hex() for i in ids}
    b.close()
    v.stop()
    out = cli(v.cfg, "gc")  # finish the interrupted collection
    assert name in out.stdout
    v.start()
    check_consistent(v, name, toks["restore"], {s.name: s.data}, exact=True)
    assert storage_names(v, name, FileType.DATA) == {keep.name}


def test_tmp_spool_is_not_visible(own_vault: Any) -> None:
    v = own_vault
    v.start()
    spool = Path(v.root / "data" / "spool")
    assert spool.is_dir()

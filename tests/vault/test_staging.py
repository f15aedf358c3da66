"""Packs bound for local storage are written to a temporary file of the practice's ``tmp/``
folder as they arrive (rempart.vault.staging): the file is invisible until the upload is
complete and checked, and every refused or cut-off upload removes it."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rempart.core.clock import FakeClock
from rempart.core.errors import NotFound, StorageFull
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend
from rempart.vault import db, staging
from rempart.vault import practices as ops
from rempart.vault.app import create_app
from rempart.vault.config import parse_config
from rempart.vault.staging import STAGE, StagedUpload

from .objects import make_pack, sha

LIMIT = 1_000_000


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_refused_packs_leave_no_temporary_file_and_nothing_visible(tmp_path: Path) -> None:
    cfg = parse_config({"tls": {"enabled": False}, "limits": {"max_request_bytes": LIMIT}}, tmp_path)
    app = create_app(cfg, FakeClock())
    v = app.state.vault
    toks = ops.add_practice(v, "doc", actor="t")
    c = TestClient(app)
    auth = {"Authorization": f"Bearer {toks['backup']}"}
    root = tmp_path / "storage" / "doc"
    pk, _ = make_pack([50_000, 20_000])
    big, _ = make_pack([LIMIT])
    junk = b"not a pack" * 1000
    refused = [
        (f"/v1/p/doc/data/{sha(b'other')}", pk.data, 422),  # the body's SHA-256 is not its name
        (f"/v1/p/doc/data/{sha(junk)}", junk, 422),  # named right, but not a pack
        (f"/v1/p/doc/data/{big.name}", big.data, 413),  # larger than the vault's limit
    ]
    for url, body, status in refused:
        r = c.post(url, content=body, headers=auth)
        assert r.status_code == status, r.text
        assert _files(root / "tmp") == [], f"{url}: a temporary file was left"
        assert _files(root / "data") == [], f"{url}: something was stored"
    small = ops.add_practice(v, "small", actor="t", quota_bytes=1000)
    r = c.post(f"/v1/p/small/data/{pk.name}", content=pk.data, headers={"Authorization": f"Bearer {small['backup']}"})
    assert r.status_code == 507, r.text  # over the quota
    assert _files(tmp_path / "storage" / "small" / "tmp") == [] and _files(tmp_path / "storage" / "small" / "data") == []
    with v.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.objects)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(db.blobs)).scalar() == 0

    for status in (201, 200):  # stored once; the same bytes again are a no-op
        r = c.post(f"/v1/p/doc/data/{pk.name}", content=pk.data, headers=auth)
        assert r.status_code == status, r.text
        assert _files(root / "tmp") == []
    assert _files(root / "data") == [root / "data" / pk.name[:2] / pk.name]
    assert (root / "data" / pk.name[:2] / pk.name).read_bytes() == pk.data
    with v.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.blobs)).scalar() == 2
        outcomes = [r.outcome for r in conn.execute(sa.select(db.audit.c.outcome).where(
            db.audit.c.action.like("%/v1/p/{practice}/{type}/{name}") | db.audit.c.action.like("create.%")))]
    assert outcomes.count("integrity-error") == 2 and "request-too-large" in outcomes
    assert "quota-exceeded" in outcomes and outcomes.count("ok") == 1


def test_publish_is_create_only_and_discard_removes_the_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo", create=True)
    pk, _ = make_pack([1000])
    h = Handle(FileType.DATA, pk.name)
    first = StagedUpload(backend, h)
    for i in range(0, len(pk.data), 300):  # in pieces, as a body arrives
        first.write(pk.data[i : i + 300])
    assert first.size == len(pk.data) and first.hexdigest() == pk.name
    assert [e.length for e in first.pack_entries()] == [1000]
    with pytest.raises(NotFound):
        backend.stat(h)  # not visible before publish
    assert first.publish() is True
    assert backend.load(h) == pk.data and _files(tmp_path / "repo" / "tmp") == []
    second = StagedUpload(backend, h)
    second.write(b"other bytes")
    assert second.publish() is False  # the name exists: nothing replaced
    assert backend.load(h) == pk.data and _files(tmp_path / "repo" / "tmp") == []
    third = StagedUpload(backend, h)
    third.write(pk.data[:10])
    third.discard()
    third.discard()
    assert _files(tmp_path / "repo" / "tmp") == []


def _fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("size", [1, 4095, 4096, STAGE - 1, STAGE, STAGE + 1, 2 * STAGE + 5000, 3 * STAGE])
def test_every_length_is_stored_exactly_and_past_the_page_cache(tmp_path: Path, size: int) -> None:
    """Whatever the length and however the body is cut, the file holds exactly the bytes sent;
    full buffers and the tail's whole blocks are written with O_DIRECT, so at most the last
    partial block's page is left in the page cache (tmpfs has no O_DIRECT: same bytes, cached)."""
    from tests.pagecache import resident_pages

    backend = LocalBackend(tmp_path / "repo", create=True)
    data = os.urandom(size)
    h = Handle(FileType.DATA, sha(data))
    up = StagedUpload(backend, h)
    for i in range(0, size, 300_001):  # pieces that straddle the buffers' boundaries
        up.write(memoryview(data)[i : i + 300_001])
    assert up.size == size and up.hexdigest() == h.name
    assert up.publish() is True
    path = backend.file_path(h)
    cached = resident_pages(path)
    assert path.read_bytes() == data
    assert _files(tmp_path / "repo" / "tmp") == []
    if _fs_type(path) not in ("tmpfs", "ramfs"):
        assert cached <= (1 if size % 4096 else 0), f"{cached} pages of {size} bytes went through the page cache"


def test_a_full_disk_during_an_upload_is_storage_full_and_leaves_nothing(tiny_fs: Path) -> None:
    """The writer thread's ENOSPC comes out as StorageFull (at a later chunk or when the upload
    completes), and discarding the upload removes its partial file."""
    backend = LocalBackend(tiny_fs / "repo", create=True)
    data = os.urandom(3 * STAGE)
    for _ in range(staging.POOL_KEEP):  # a full pool: the failed upload's buffers are let go, not kept
        staging._BUFFERS.give(mmap.mmap(-1, STAGE))
    up = StagedUpload(backend, Handle(FileType.DATA, sha(data)))
    with pytest.raises(StorageFull, match="no space") as failed:
        for i in range(0, len(data), 256 * 1024):
            up.write(data[i : i + 256 * 1024])
        up.publish()
    up.discard()  # while the error (and its traceback, which may hold a view of a buffer) is alive
    assert up.handle.name in str(failed.value)  # the error names the upload
    assert _files(tiny_fs / "repo") == []


def test_discard_waits_for_the_write_in_flight_and_removes_the_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo", create=True)
    data = os.urandom(2 * STAGE + 10)
    up = StagedUpload(backend, Handle(FileType.DATA, sha(data)))
    up.write(data)  # two buffers handed to the writer, the second possibly still being written
    up.discard()
    up.discard()
    assert _files(tmp_path / "repo") == []


def test_an_upload_waiting_for_the_disk_does_not_hold_up_other_requests(tmp_path: Path) -> None:
    """While the writer threads are busy (a disk slower than the network), an upload awaits its
    write in flight: the event loop serves other requests meanwhile, and the upload completes
    once the disk catches up. (Were the wait a blocking one, the health check below would only
    be answered when the safety timer frees the writers, 10 s later.)"""
    cfg = parse_config({"tls": {"enabled": False}}, tmp_path)
    app = create_app(cfg, FakeClock())
    toks = ops.add_practice(app.state.vault, "doc", actor="t")
    pk, _ = make_pack([3 * STAGE])
    tmp = tmp_path / "storage" / "doc" / "tmp"
    gate = threading.Event()
    safety = threading.Timer(10.0, gate.set)
    safety.start()
    blockers = [staging._writer().submit(gate.wait) for _ in range(staging.WRITERS)]

    async def body() -> Any:
        for i in range(0, len(pk.data), 256 * 1024):
            yield pk.data[i : i + 256 * 1024]

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vault") as c:
            upload = asyncio.ensure_future(c.post(f"/v1/p/doc/data/{pk.name}", content=body(),
                                                  headers={"Authorization": f"Bearer {toks['backup']}"}))
            while not _files(tmp):  # the upload has begun
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # two buffers full, the first one's write queued behind the blockers
            t0 = time.monotonic()
            r = await c.get("/v1/health")
            assert r.status_code == 200 and time.monotonic() - t0 < 5
            assert not upload.done(), "the upload should be waiting for its write"
            assert _files(tmp)[0].stat().st_size == 0  # nothing written yet: the writers are held
            gate.set()
            r = await upload
            assert r.status_code == 201, r.text

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        safety.cancel()
        for b in blockers:
            b.result()
    assert (tmp_path / "storage" / "doc" / "data" / pk.name[:2] / pk.name).read_bytes() == pk.data
    assert _files(tmp) == []


def _tls_socket(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))


def _wait_for(cond: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cond()
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_pack_goes_to_a_hidden_temporary_file_while_it_arrives(own_vault: Any) -> None:
    """Real vault process: half a pack sent is already on disk in ``tmp/`` (not held in
    memory until the end: at most the buffer being filled, STAGE bytes), yet invisible; the rest
    completes the upload and leaves no trace."""
    own_vault.start()
    name, toks = own_vault.add_practice()
    tmp = own_vault.root / "data" / "storage" / name / "tmp"
    pk, _ = make_pack([3_000_000, 1_500_000])
    assert len(pk.data) // 2 > 2 * STAGE
    half = len(pk.data) // 2
    b = own_vault.backend(name, toks["backup"])
    h = Handle(FileType.DATA, pk.name)
    try:
        with _tls_socket(own_vault.port) as s:
            s.sendall(f"POST /v1/p/{name}/data/{pk.name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      f"{toks['backup']}\r\nContent-Length: {len(pk.data)}\r\n\r\n".encode())
            s.sendall(pk.data[:half])
            staged = _wait_for(lambda: [p for p in _files(tmp) if p.stat().st_size >= half - STAGE],
                               "the first half in a temporary file")
            assert len(staged) == 1 and staged[0].name.startswith(pk.name) and staged[0].suffix == ".tmp"
            with pytest.raises(NotFound):
                b.stat(h)
            assert pk.name not in {f.name for f in b.list(FileType.DATA)}
            s.sendall(pk.data[half:])
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        assert _files(tmp) == []
        reader = own_vault.backend(name, toks["restore"])
        assert reader.load(h) == pk.data
        reader.close()
    finally:
        b.close()

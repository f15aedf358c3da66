"""Whole-pack downloads of the vault client go through keep-alive http.client connections (the
restore path): exact bytes, errors mapped like every other request, connections reused."""

from __future__ import annotations

from typing import Any

import pytest

from rempart.core.errors import AuthenticationError, NotFound, PermissionDenied
from rempart.storage.base import FileType, Handle

from .objects import make_pack


def test_whole_pack_download(vault: Any) -> None:
    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    packs = [make_pack([300_000, 700_000])[0] for _ in range(3)]
    for pk in packs:
        b.save(Handle(FileType.DATA, pk.name), pk.data)
    with pytest.raises(PermissionDenied):  # the backup token never reads blob bytes
        b.load(Handle(FileType.DATA, packs[0].name))
    b.close()
    r = vault.backend(name, toks["restore"])
    before = r.requests
    for _ in range(2):
        for pk in packs:
            assert r.load(Handle(FileType.DATA, pk.name)) == pk.data
    assert r.requests - before == 6
    idle = list(r._bulk._idle)
    assert len(idle) == 1  # one keep-alive connection served all six downloads one after the other
    assert r.load(Handle(FileType.DATA, packs[0].name)) == packs[0].data
    assert r._bulk._idle == idle
    with pytest.raises(NotFound):
        r.load(Handle(FileType.DATA, "0" * 64))
    assert r.load(Handle(FileType.DATA, packs[1].name)) == packs[1].data  # still usable after an error
    r.close()
    bad = vault.backend(name, "rvt_000000000000_" + "x" * 43)
    with pytest.raises(AuthenticationError):
        bad.load(Handle(FileType.DATA, packs[0].name))
    bad.close()


@pytest.mark.slow
def test_uploads_use_keepalive_connections_and_survive_a_restart(own_vault: Any) -> None:
    from rempart.core.errors import IntegrityError

    own_vault.start()
    name, toks = own_vault.add_practice()
    b = own_vault.backend(name, toks["backup"])
    packs = [make_pack([200_000, 500_000])[0] for _ in range(3)]
    before = b.requests
    for pk in packs[:2]:  # a memoryview body (as the write session sends packs) goes as it is
        b.save(Handle(FileType.DATA, pk.name), memoryview(bytearray(pk.data)))  # type: ignore[arg-type]
    assert b.requests - before == 2 and len(b._bulk._idle) == 1  # one connection for both
    b.save(Handle(FileType.DATA, packs[0].name), packs[0].data)  # identical re-upload: a no-op
    with pytest.raises(IntegrityError):  # name is not the SHA-256 of the bytes
        b.save(Handle(FileType.DATA, packs[1].name), packs[2].data)
    own_vault.stop()
    own_vault.start()  # the kept-alive connection is now dead: retried once on a fresh one
    b.save(Handle(FileType.DATA, packs[2].name), packs[2].data)
    r = own_vault.backend(name, toks["restore"])
    for pk in packs:
        assert r.load(Handle(FileType.DATA, pk.name)) == pk.data
    assert sorted(i.name for i in r.list(FileType.DATA)) == sorted(pk.name for pk in packs)
    b.close()
    r.close()


def test_every_backend_request_on_keepalive_connections_without_httpx(vault: Any) -> None:
    """The backend's JSON calls (list, exists, status, runs) and HEAD go over the same keep-alive
    http.client connections as the object transfers, and a backup/restore process never imports
    httpx (a fifth of a second of CPU per command)."""
    import subprocess
    import sys

    name, toks = vault.add_practice()
    pk, ids = make_pack([1000, 2000])
    code = f"""
import sys
from rempart.storage.base import FileType, Handle
from rempart.storage.vaultclient import VaultBackend
b = VaultBackend({f"{vault.url}/{name}"!r}, token=sys.stdin.readline().strip(), pin={vault.pin!r})
h = Handle(FileType.DATA, {pk.name!r})
b.save(h, bytes.fromhex({pk.data.hex()!r}))
assert b.stat(h).size == {len(pk.data)}
assert [f.name for f in b.list(FileType.DATA)] == [{pk.name!r}]
assert b.exists([bytes.fromhex({ids[0].hex()!r}), b"x" * 32]) == {{{ids[0].hex()!r}}}
b.report_run("ok", counts={{"files": 1}})
assert b.status()["last_run"]["outcome"] == "ok"
assert b.requests == 6 and len(b._bulk._idle) == 1
print("httpx" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], input=toks["backup"] + "\n", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_ranged_read_into_a_buffer(vault: Any) -> None:
    """``load_into`` fills the caller's buffer with exactly the asked range (what the restore
    processes use to reuse their buffers), over the same keep-alive connection, and refuses a
    range beyond the end or an unknown pack without leaving the connection unusable."""
    from rempart.core.errors import IntegrityError

    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    pk = make_pack([300_000, 700_000])[0]
    h = Handle(FileType.DATA, pk.name)
    b.save(h, pk.data)
    b.close()
    r = vault.backend(name, toks["restore"])
    buf = bytearray(b"\xee" * 400_000)
    for start, n in ((0, 300_000), (123_457, 400_000), (len(pk.data) - 5, 5)):
        view = memoryview(buf)[:n]
        r.load_into(h, start, view)
        assert bytes(view) == pk.data[start : start + n]
    assert buf[5:] == pk.data[123_457 + 5 : 123_457 + 400_000]  # the 5 tail bytes wrote only 5
    assert len(r._bulk._idle) == 1
    with pytest.raises(IntegrityError):  # beyond the end: a short answer is not taken as the range
        r.load_into(h, len(pk.data) - 10, memoryview(buf)[:20])
    with pytest.raises(NotFound):
        r.load_into(Handle(FileType.DATA, "0" * 64), 0, memoryview(buf)[:10])
    view = memoryview(buf)[:1000]
    r.load_into(h, 1, view)  # still usable after the errors
    assert bytes(view) == pk.data[1:1001]
    r.close()


def test_restore_process_reuses_its_run_buffers(vault: Any) -> None:
    """A remote restore process reads each run into a pooled buffer and, once the run is
    decoded, reuses that buffer for the next runs (no fresh memory per run), with the right
    bytes every time; the pool stays within the fetch-ahead budget."""
    import io

    from rempart.snapshot.restore_child import BUF_STEP, FETCH_AHEAD, _RemoteChild, _Slot

    name, toks = vault.add_practice()
    b = vault.backend(name, toks["backup"])
    pk = make_pack([3_000_000, 2_000_000])[0]
    b.save(Handle(FileType.DATA, pk.name), pk.data)
    b.close()
    r = vault.backend(name, toks["restore"])
    child = _RemoteChild(io.BytesIO(), 1, {"vault": r.settings(), "retry": (2, 0.01, 0.1)})
    r.close()
    pack = bytes.fromhex(pk.name)
    buffers = set()
    for start, end in ((0, 900_000), (10, 2 * BUF_STEP + 5), (4_000_000, 4_400_000), (1, 2)):
        slot = _Slot(end - start)
        view = child._load(slot, pack, start, end)
        assert bytes(view) == pk.data[start:end]
        assert slot.buf is not None and len(slot.buf) % BUF_STEP == 0
        buffers.add(id(slot.buf))
        child._release(slot)
        assert slot.buf is None and slot.data is None
    # 1 MiB buffer reused by the 1st, 3rd, 4th runs; the 3 MiB one made once for the 2nd
    assert len(buffers) == 2
    assert sum(map(len, child._free)) <= FETCH_AHEAD
    child.vault.close()


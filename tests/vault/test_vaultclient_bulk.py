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

"""A restore through a real vault reads runs of neighbouring blobs with ranged requests: far
fewer requests than blobs, never a whole pack, byte-identical files; a damaged byte inside a
fetched range is detected (the file is not restored, the restore fails naming it)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rempart.repository.repo import Repository
from rempart.storage.base import FileType

from .cabinet import back_up_cabinet, rempart

ROUTE = "/v1/p/{practice}/{type}/{name}"


def served(vault: Any) -> dict[tuple[str, str], float]:
    """Reads served by the vault, by (object type, 'whole' or 'range'), from its metrics."""
    with vault.admin() as c:
        text = c.get("/metrics").text
    out: dict[tuple[str, str], float] = {}
    for m in re.finditer(r"^rempart_vault_reads_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[labels["type"], labels["read"]] = float(m.group(2))
    return out


@pytest.fixture
def backed_up(own_vault: Any, tmp_path: Path) -> Iterator[tuple[Any, str, dict[str, str], Path]]:
    """A vault holding one snapshot of 400 small files (incompressible, 1-6 KiB) and a 3 MiB one."""
    _, repo, env, src = back_up_cabinet(own_vault, tmp_path, seed=7, folders=8, files=50, sizes=(1000, 6000))
    yield own_vault, repo, env, src


def test_restore_reads_coalesced_ranges(backed_up: tuple[Any, str, dict[str, str], Path], tmp_path: Path) -> None:
    vault, repo, env, src = backed_up
    name = repo.rsplit("/", 1)[1]
    b = vault.backend(name, env["REMPART_VAULT_TOKEN"])
    r = Repository.open(b)
    packs = [fi.name for fi in b.list(FileType.DATA)]
    blobs = sum(len(r.read_pack_header(p).entries) for p in packs)
    b.close()
    assert blobs > 400  # every small file is at least one blob, plus trees and the large file

    before = served(vault)
    out = tmp_path / "out"
    res = rempart(repo, env, "restore", "latest", "--target", str(out), "--kit", str(tmp_path / "kit"))
    assert res.returncode == 0, res.stderr
    after = served(vault)
    ranged = after.get(("data", "range"), 0) - before.get(("data", "range"), 0)
    whole = after.get(("data", "whole"), 0) - before.get(("data", "whole"), 0)

    restored = out / str(src).lstrip("/")
    files = [f for f in src.rglob("*") if f.is_file()]
    assert len(files) == 401
    for f in files:
        assert (restored / f.relative_to(src)).read_bytes() == f.read_bytes(), f
    # runs of neighbouring blobs, not one request per blob (nor per file); a pack's key
    # envelope is 1 ranged read (where the index says its header begins)
    assert 0 < ranged <= blobs / 10 + len(packs), (ranged, blobs, len(packs))
    assert whole == 0  # no whole pack was fetched (nor cached)


def test_damaged_range_is_detected(backed_up: tuple[Any, str, dict[str, str], Path], tmp_path: Path) -> None:
    vault, repo, env, src = backed_up
    name = repo.rsplit("/", 1)[1]
    pack_files = sorted((vault.root / "data" / "storage" / name / "data").rglob("*"), key=lambda p: -p.stat().st_size
                        if p.is_file() else 0)
    biggest = pack_files[0]
    assert biggest.is_file() and len(biggest.name) == 64
    data = bytearray(biggest.read_bytes())
    data[len(data) // 3] ^= 0x40  # inside the blobs (the plain header is at the end)
    os.chmod(biggest, 0o644)
    biggest.write_bytes(bytes(data))

    out = tmp_path / "out"
    res = rempart(repo, env, "restore", "latest", "--target", str(out), "--kit", str(tmp_path / "kit"))
    assert res.returncode != 0
    assert "cannot restore" in res.stderr, res.stderr
    damaged = re.search(r"([^\s:']+): cannot restore", res.stderr)
    assert damaged is not None, res.stderr
    # the damaged file is not left behind half-written; the others that were restored are intact
    restored = out / str(src).lstrip("/")
    assert not (out / damaged.group(1)).exists() and not (restored / damaged.group(1)).exists()
    intact = [f for f in src.rglob("*") if f.is_file() and (restored / f.relative_to(src)).exists()]
    for f in intact:
        assert (restored / f.relative_to(src)).read_bytes() == f.read_bytes(), f

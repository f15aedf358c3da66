"""rempart.repository.mirror over in-memory backends: copy order, what a second run copies,
objects that vanish or rot in the source between the listing and the copy."""

from __future__ import annotations

import hashlib
import os

from rempart.repository.mirror import list_source, mirror
from rempart.storage.base import FileType, Handle
from rempart.storage.memory import MemoryBackend


class Recording(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.saved: list[FileType] = []

    def save(self, h: Handle, data: bytes) -> None:
        super().save(h, data)
        self.saved.append(h.type)


def put(b: MemoryBackend, t: FileType, data: bytes) -> str:
    name = hashlib.sha256(data).hexdigest()
    b.save(Handle(t, name), data)
    return name


def source() -> MemoryBackend:
    src = MemoryBackend()
    src.save(Handle(FileType.CONFIG, "config"), b'{"id": "r1"}')
    for t, n in ((FileType.SNAPSHOT, 2), (FileType.INDEX, 1), (FileType.DATA, 5)):
        for _ in range(n):
            put(src, t, os.urandom(1000))
    return src


def test_packs_first_then_index_then_snapshots_and_a_second_run_copies_nothing() -> None:
    src, dst = source(), Recording()
    rep = mirror(src, dst, workers=3)
    assert rep.copied == {"data": 5, "index": 1, "snapshots": 2} and rep.config_created
    assert dst.saved == [FileType.CONFIG] + [FileType.DATA] * 5 + [FileType.INDEX] + [FileType.SNAPSHOT] * 2
    for t in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT):
        assert {f.name: src.load(Handle(t, f.name)) for f in src.list(t)} == \
            {f.name: dst.load(Handle(t, f.name)) for f in dst.list(t)}
    again = mirror(src, dst)
    assert again.copied == {"data": 0, "index": 0, "snapshots": 0} and again.bytes_copied == 0
    assert again.present == {"data": 5, "index": 1, "snapshots": 2}


def test_objects_gone_or_rotten_after_the_listing_are_reported_and_not_copied() -> None:
    src, dst = source(), MemoryBackend()
    listed = list_source(src)
    gone = listed[FileType.SNAPSHOT][0]
    src.remove(Handle(FileType.SNAPSHOT, gone))  # forgotten by the vault's GC meanwhile
    rotten = listed[FileType.DATA][2]
    good = src._files[(FileType.DATA, rotten)]
    src._files[(FileType.DATA, rotten)] = bytes([good[0] ^ 0xFF]) + good[1:]  # always a change
    rep = mirror(src, dst, listed=listed)
    assert rep.gone == [f"snapshots/{gone}"] and rep.damaged == [f"data/{rotten}"]
    assert rep.copied == {"data": 4, "index": 1, "snapshots": 1}
    assert rotten not in {f.name for f in dst.list(FileType.DATA)}


def test_a_source_not_initialised_yet_mirrors_nothing_and_fails_nothing() -> None:
    dst = MemoryBackend()
    rep = mirror(MemoryBackend(), dst)
    assert rep.copied == {"data": 0, "index": 0, "snapshots": 0} and not rep.config_created
    assert list(dst.list(FileType.CONFIG)) == []

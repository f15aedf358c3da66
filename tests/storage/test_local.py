"""LocalBackend specifics: disk full, leftovers of killed writers, fsync ordering."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest

from rempart.core.errors import NotFound, StorageFull
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend


def _h(data: bytes, ftype: FileType = FileType.DATA) -> Handle:
    return Handle(ftype, hashlib.sha256(data).hexdigest())


def test_disk_full_raises_storage_full_and_leaves_nothing(tiny_fs: Path) -> None:
    b = LocalBackend(tiny_fs / "repo", create=True)
    small = b"s" * 1000
    b.save(_h(small), small)
    big = os.urandom(2 * 1024 * 1024)
    with pytest.raises(StorageFull, match="no space"):
        b.save(_h(big), big)
    assert [f.name for f in b.list(FileType.DATA)] == [_h(small).name]
    assert list((tiny_fs / "repo" / "tmp").iterdir()) == []  # the partial temp file is gone
    with pytest.raises(NotFound):
        b.stat(_h(big))
    assert b.load(_h(small)) == small  # nothing lost
    other = b"t" * 5000
    b.save(_h(other), other)  # space freed by the failed write is usable again
    assert b.load(_h(other)) == other


def test_killed_writer_leaves_only_a_temp_file_that_clean_tmp_removes(tmp_path: Path) -> None:
    """A real process killed with SIGKILL between fsync and link."""
    root = tmp_path / "repo"
    LocalBackend(root, create=True)
    data = b"k" * 100_000
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from rempart.storage.base import FileType, Handle
        from rempart.storage.local import LocalBackend
        def hang(*a):
            print("ready", flush=True)
            time.sleep(60)
        os.link = hang
        LocalBackend(Path({str(root)!r})).save(Handle(FileType.DATA, {_h(data).name!r}), b"k" * 100_000)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL
    leftovers = list((root / "tmp").glob("*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == len(data)
    b = LocalBackend(root)
    assert list(b.list(FileType.DATA)) == []
    with pytest.raises(NotFound):
        b.load(_h(data))
    assert b.clean_tmp() == 1
    assert list((root / "tmp").iterdir()) == []
    b.save(_h(data), data)
    assert b.load(_h(data)) == data


def test_fsync_ordering(tmp_path: Path) -> None:
    """File data is fsynced before the link makes it visible; the directory after."""
    b = LocalBackend(tmp_path / "repo", create=True)
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_unlink = os.fsync, os.link, os.unlink

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str, dst: str) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst)

    def unlink(p: str, *a: object, **k: object) -> None:
        events.append(("unlink", str(p)))
        real_unlink(p)

    data = b"ordered"
    h = _h(data)
    final = str(tmp_path / "repo" / "data" / h.name[:2] / h.name)
    with mock.patch.object(os, "fsync", fsync), mock.patch.object(os, "link", link), \
            mock.patch.object(os, "unlink", unlink):
        b.save(h, data)
        kinds = [e[0] for e in events]
        assert kinds == ["fsync", "link", "unlink", "fsync"], events
        assert events[0][1].startswith(str(tmp_path / "repo" / "tmp"))  # the temp file's data first
        assert events[1][1] == final
        assert events[3][1] == str(Path(final).parent)  # then the directory entry
        events.clear()
        b.remove(h)
        assert [e[0] for e in events] == ["unlink", "fsync"]
        assert events[1][1] == str(Path(final).parent)


def test_list_ignores_stray_files(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "repo", create=True)
    data = b"real"
    b.save(_h(data), data)
    d = tmp_path / "repo" / "data" / _h(data).name[:2]
    (d / (_h(data).name + ".tmp")).write_bytes(b"x")
    (d / "notes.txt").write_bytes(b"x")
    (d / ("A" * 64)).write_bytes(b"x")  # not lowercase hex: no file a Handle could name
    (tmp_path / "repo" / "index" / "README").write_bytes(b"x")
    assert [f.name for f in b.list(FileType.DATA)] == [_h(data).name]
    assert list(b.list(FileType.INDEX)) == []


def test_open_missing_root_lists_as_not_found(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "absent")
    with pytest.raises(NotFound):
        list(b.list(FileType.SNAPSHOT))


def test_a_pack_from_page_aligned_memory_is_written_past_the_page_cache(tmp_path: Path) -> None:
    """A pack built in page-aligned (shared) memory is written with O_DIRECT: the same bytes on
    disk, an unaligned tail included, without its pages in the page cache (the copy into the
    cache cost ~12 ms of CPU per 10 MiB pack). Bytes objects and tmpfs take the ordinary path."""
    import mmap

    from tests.pagecache import resident_pages

    size = (3 << 20) + 1234  # whole 4 KiB blocks, then a tail written through the cache
    payload = os.urandom(size)
    with mmap.mmap(-1, size) as buf:
        buf[:] = payload
        view = memoryview(buf)
        be = LocalBackend(tmp_path / "repo", create=True)
        h = _h(payload)
        try:
            be.save(h, view)
        finally:
            view.release()
    path = be.file_path(h)
    cached = resident_pages(path)  # before anything reads it back
    assert be.load(h) == payload
    assert be.load(h, offset=size - 1234, length=1234) == payload[-1234:]
    if cached > 16 and cached == (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE:
        # written through the cache: only tmpfs (or a file system refusing O_DIRECT) may do that
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
        assert fs in ("tmpfs", "ramfs"), f"a pack on {fs} went through the page cache"
        pytest.skip(f"{fs} has no O_DIRECT")
    assert cached <= 1  # at most the tail's page

    other = tmp_path / "plain"
    other.mkdir()
    be2 = LocalBackend(other, create=True)
    be2.save(h, payload)  # bytes: not page-aligned for ctypes, written the ordinary way
    assert be2.load(h) == payload


def test_clean_tmp_takes_only_files_left_untouched_for_the_grace_period(tmp_path: Path) -> None:
    """A writer still at work keeps its temporary file fresh: a cleanup with ``now`` removes
    only what was last written more than ``older_than`` seconds before."""
    from rempart.storage.local import TMP_GRACE

    b = LocalBackend(tmp_path / "repo", create=True)
    now = 1_800_000_000.0
    stale, fresh = b.root / "tmp" / "a.1.tmp", b.root / "tmp" / "b.2.tmp"
    keep = b.root / "tmp" / "notes.txt"  # not a temporary file of ours
    for p, age in ((stale, TMP_GRACE + 60), (fresh, TMP_GRACE - 60), (keep, 10 * TMP_GRACE)):
        p.write_bytes(b"half a pack")
        os.utime(p, (now - age, now - age))
    assert b.clean_tmp(older_than=TMP_GRACE, now=now) == 1
    assert not stale.exists() and fresh.exists() and keep.exists()

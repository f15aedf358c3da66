"""Large ranged reads of local storage are views of the mapped file (no copy into fresh memory),
byte-identical to ``LocalBackend.load``; small ranges and other backends read as before; a
range past the end is an IntegrityError; a view stays valid when GC unlinks the file. (Through
a real vault: the restores of tests/vault/test_restore_*.py read runs of up to 4 MiB, compared
byte for byte.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rempart.core.errors import IntegrityError
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend
from rempart.storage.memory import MemoryBackend
from rempart.vault import mapped
from rempart.vault.mapped import MAP_MIN, read_range

DATA = random.Random(3).randbytes(3 * MAP_MIN + 12345)


@pytest.fixture
def stored(tmp_path: Path) -> tuple[LocalBackend, Handle]:
    b = LocalBackend(tmp_path / "repo", create=True)
    h = Handle(FileType.DATA, "ab" * 32)
    b.save(h, DATA)
    return b, h


@pytest.mark.parametrize(("start", "length"), [(0, MAP_MIN), (1, 2 * MAP_MIN + 7), (len(DATA) - MAP_MIN, MAP_MIN),
                                               (4097, len(DATA) - 4097)])
def test_large_ranges_are_views_of_the_file(stored: tuple[LocalBackend, Handle], start: int, length: int) -> None:
    b, h = stored
    got = read_range(b, h, start, length)
    assert isinstance(got, memoryview)
    assert got == DATA[start : start + length] == b.load(h, offset=start, length=length)


def test_small_ranges_and_other_backends_read_as_before(stored: tuple[LocalBackend, Handle]) -> None:
    b, h = stored
    small = read_range(b, h, 10, MAP_MIN - 1)
    assert isinstance(small, bytes) and small == DATA[10 : 10 + MAP_MIN - 1]
    whole = read_range(b, h, 0, None)
    assert isinstance(whole, bytes) and whole == DATA
    m = MemoryBackend()
    m.save(h, DATA)
    other = read_range(m, h, 0, 2 * MAP_MIN)
    assert isinstance(other, bytes) and other == DATA[: 2 * MAP_MIN]


def test_a_range_past_the_end_is_an_integrity_error(stored: tuple[LocalBackend, Handle]) -> None:
    b, h = stored
    with pytest.raises(IntegrityError, match="short read"):
        read_range(b, h, len(DATA) - MAP_MIN + 1, MAP_MIN)


def test_a_view_outlives_the_unlinked_file(stored: tuple[LocalBackend, Handle]) -> None:
    b, h = stored
    view = read_range(b, h, 5, 2 * MAP_MIN)
    path = b.file_path(h)
    os.chmod(path, 0o600)
    path.unlink()  # what GC's sweep does to an unreferenced pack
    assert view == DATA[5 : 5 + 2 * MAP_MIN]


def test_a_file_truncated_after_mapping_is_an_error_not_a_bus_error(tmp_path: Path) -> None:
    """The race an outside hand (or a failing disk) can cause: the file is cut short after the
    vault mapped it. Touching the missing pages raises SIGBUS, which kills the whole vault; the
    range is faulted in before use, so the request fails alone. Run in a child process: on
    failure the child dies of SIGBUS, which pytest could not survive."""
    script = textwrap.dedent(f"""
        import mmap, os, random
        from pathlib import Path
        from rempart.storage.base import FileType, Handle
        from rempart.storage.local import LocalBackend
        from rempart.core.errors import IntegrityError
        from rempart.vault import mapped
        b = LocalBackend(Path({str(tmp_path / "repo")!r}), create=True)
        h = Handle(FileType.DATA, "cd" * 32)
        b.save(h, random.Random(1).randbytes(3 * mapped.MAP_MIN))
        path = b.file_path(h)
        os.chmod(path, 0o600)
        real = mmap.mmap
        def map_then_truncate(*a, **k):
            m = real(*a, **k)
            os.truncate(path, 1000)
            return m
        mapped.mmap.mmap = map_then_truncate
        try:
            view = mapped.read_range(b, h, 4096, 2 * mapped.MAP_MIN)
            print("served", len(bytes(view)))
        except IntegrityError as exc:
            print("refused:", exc)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"the process died (signal {-r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.startswith("refused:") and "shrank" in r.stdout


def test_a_file_truncated_before_mapping_is_an_integrity_error(stored: tuple[LocalBackend, Handle],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    b, h = stored
    path = b.file_path(h)
    os.chmod(path, 0o600)
    real = os.fstat

    def fstat_then_truncate(fd: int) -> os.stat_result:
        st = real(fd)
        os.truncate(path, 1000)
        return st

    monkeypatch.setattr(mapped.os, "fstat", fstat_then_truncate)
    with pytest.raises(IntegrityError, match="shrank"):
        read_range(b, h, 4096, 2 * MAP_MIN)


def test_a_kernel_that_cannot_populate_gets_plain_reads(stored: tuple[LocalBackend, Handle],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An advice the kernel does not know is refused with EINVAL, as MADV_POPULATE_READ is by
    kernels older than 5.14: the range is read instead, and so are all later ones."""
    b, h = stored
    monkeypatch.setattr(mapped, "MADV_POPULATE_READ", 0x7FFF)
    monkeypatch.setattr(mapped, "_POPULATE", [True])
    got = read_range(b, h, 7, 2 * MAP_MIN)
    assert isinstance(got, bytes) and got == DATA[7 : 7 + 2 * MAP_MIN]
    assert mapped._POPULATE[0] is False
    again = read_range(b, h, 0, MAP_MIN)
    assert isinstance(again, bytes) and again == DATA[:MAP_MIN]

"""Large ranged reads of local storage are views of the mapped file (no copy into fresh memory),
byte-identical to ``LocalBackend.load``; small ranges and other backends read as before; a
range past the end is an IntegrityError; a view stays valid when GC unlinks the file. (Through
a real vault: the restores of tests/vault/test_restore_*.py read runs of up to 4 MiB, compared
byte for byte.)"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rempart.core.errors import IntegrityError
from rempart.storage.base import FileType, Handle
from rempart.storage.local import LocalBackend
from rempart.storage.memory import MemoryBackend
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

from __future__ import annotations

import itertools

import pytest

from rempart.detect.sampling import BLOCK, HEAD, TAIL, SampleView, sample_plan


@pytest.mark.parametrize("size", [1, 100, 65536, 65537, 70_000, 200_000, 10**6, 3 * 10**9])
def test_plan_bounded_sorted_with_head_and_tail(size: int) -> None:
    plan = sample_plan(size)
    assert plan[0][0] == 0
    assert plan[-1][0] + plan[-1][1] == size
    assert sum(n for _, n in plan) <= 64 * 1024
    for (a, n), (b, _) in itertools.pairwise(plan):
        assert a + n <= b  # sorted, no overlap
    if size > 65536:
        assert plan[0] == (0, HEAD) and plan[-1] == (size - TAIL, TAIL)
        assert all(off % BLOCK == 0 and n == BLOCK for off, n in plan[1:-1])
        if size > 10**6:
            assert len(plan) == 14  # 12 spread blocks
    else:
        assert plan == [(0, size)]


def test_empty_file_has_no_ranges() -> None:
    assert sample_plan(0) == []


def test_plan_depends_only_on_size() -> None:
    assert sample_plan(5_000_000) == sample_plan(5_000_000)


def test_view_get_only_inside_one_range() -> None:
    data = bytes(range(256)) * 1000
    view = SampleView(len(data), [(o, data[o : o + n]) for o, n in sample_plan(len(data))])
    assert view.get(10, 20) == data[10:30]
    assert view.get(HEAD - 4, 8) is None
    assert view.tail == data[-TAIL:]
    assert not view.whole

"""Wrappers around any backend: retries, faults, bandwidth limits, permission letters."""

from __future__ import annotations

import random

import pytest

from rempart.core.errors import IntegrityError, NotFound, PermissionDenied, TransientError
from rempart.storage.base import ALL, FileType, Handle, Permissions
from rempart.storage.memory import MemoryBackend
from rempart.storage.wrappers import (
    FaultyBackend,
    LimitedBackend,
    PermissionedBackend,
    RetryBackend,
    TokenBucket,
)

H = Handle(FileType.DATA, "ab" * 32)
H2 = Handle(FileType.INDEX, "cd" * 32)


class FakeTime:
    """A monotonic clock whose sleep only advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


# --- FaultyBackend --------------------------------------------------------------------------


def test_faulty_backend_fails_exactly_the_requested_calls() -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.save(H, b"x")
    fb.fail("load", times=2)
    fb.fail("stat", exc=IntegrityError("boom"))
    for _ in range(2):
        with pytest.raises(TransientError, match="injected"):
            fb.load(H)
    assert fb.load(H) == b"x"
    with pytest.raises(IntegrityError, match="boom"):
        fb.stat(H)
    assert fb.stat(H).size == 1
    assert fb.calls == {"save": 1, "load": 3, "stat": 2}


# --- RetryBackend ---------------------------------------------------------------------------


def test_retry_recovers_from_transient_errors_with_bounded_jittered_backoff() -> None:
    fb = FaultyBackend(MemoryBackend())
    t = FakeTime()
    rb = RetryBackend(fb, attempts=6, base_delay=0.5, max_delay=1.5, sleep=t.sleep, rng=random.Random(1))
    fb.fail("save", times=4)
    rb.save(H, b"data")
    assert fb.calls["save"] == 5
    assert len(t.sleeps) == 4
    caps = [0.5, 1.0, 1.5, 1.5]  # base * 2**attempt, capped at max_delay
    assert all(0 <= s <= cap for s, cap in zip(t.sleeps, caps, strict=True))
    assert len(set(t.sleeps)) == 4  # full jitter: not a fixed schedule
    assert rb.load(H) == b"data"


def test_retry_gives_up_after_attempts_and_reraises() -> None:
    fb = FaultyBackend(MemoryBackend())
    t = FakeTime()
    rb = RetryBackend(fb, attempts=3, sleep=t.sleep, rng=random.Random(0))
    fb.fail("list", times=10)
    with pytest.raises(TransientError):
        list(rb.list(FileType.DATA))
    assert fb.calls["list"] == 3
    assert len(t.sleeps) == 2


def test_retry_does_not_retry_permanent_errors() -> None:
    fb = FaultyBackend(MemoryBackend())
    t = FakeTime()
    rb = RetryBackend(fb, sleep=t.sleep)
    with pytest.raises(NotFound):
        rb.load(H)
    fb.fail("stat", exc=IntegrityError("bad"))
    with pytest.raises(IntegrityError):
        rb.stat(H)
    assert fb.calls == {"load": 1, "stat": 1}
    assert t.sleeps == []


def test_retry_list_is_atomic_per_attempt() -> None:
    """A listing that fails half-way is redone from scratch: no file twice, none missing."""
    mem = MemoryBackend()
    names = sorted(f"{i:064x}" for i in range(5))
    for n in names:
        mem.save(Handle(FileType.INDEX, n), b"i")

    class BreaksMidList(FaultyBackend):
        broken = False

        def list(self, ftype: FileType):  # type: ignore[no-untyped-def, override]
            for k, fi in enumerate(self.inner.list(ftype)):
                if k == 2 and not self.broken:
                    self.broken = True
                    raise TransientError("connection reset mid-list")
                yield fi

    rb = RetryBackend(BreaksMidList(mem), sleep=FakeTime().sleep)
    assert [fi.name for fi in rb.list(FileType.INDEX)] == names


# --- TokenBucket / LimitedBackend ----------------------------------------------------------


def test_token_bucket_enforces_rate_after_one_second_burst() -> None:
    t = FakeTime()
    tb = TokenBucket(1000, clock=t.clock, sleep=t.sleep)
    tb.take(1000)  # the first second is burst
    assert t.sleeps == []
    for _ in range(9):
        tb.take(1000)
    # 10 000 bytes at 1000 B/s: 10 s of budget, 1 s of burst allowed up front
    assert t.now == pytest.approx(9.0)


def test_token_bucket_refills_while_idle() -> None:
    t = FakeTime()
    tb = TokenBucket(1000, clock=t.clock, sleep=t.sleep)
    tb.take(3000)
    assert t.now == pytest.approx(2.0)
    t.now += 10  # idle: no debt is carried, but unused time is not banked beyond the burst either
    before = t.now
    tb.take(1000)
    assert t.now == before
    tb.take(2000)
    assert t.now - before == pytest.approx(2.0)


def test_limited_backend_throttles_uploads_and_downloads() -> None:
    t = FakeTime()
    lb = LimitedBackend(MemoryBackend(), upload_bps=500, download_bps=250)
    lb._up = TokenBucket(500, clock=t.clock, sleep=t.sleep)
    lb._down = TokenBucket(250, clock=t.clock, sleep=t.sleep)
    lb.save(H, b"u" * 2000)  # 4 s of budget, 1 s burst
    assert t.now == pytest.approx(3.0)
    assert lb.load(H) == b"u" * 2000  # download bucket is separate: 8 s of budget
    assert t.now == pytest.approx(3.0 + 7.0)
    unlimited = LimitedBackend(MemoryBackend(), upload_bps=None)
    unlimited.save(H, b"x" * 10_000_000)
    assert unlimited.load(H, offset=5, length=3) == b"xxx"


# --- Permissions ----------------------------------------------------------------------------


def test_permission_letters() -> None:
    full, ao, ro = Permissions.full(), Permissions.append_only(), Permissions.read_only()
    for t in FileType:
        assert all(full.allows(t, c) for c in ALL)
        assert ro.allows(t, "l") and ro.allows(t, "r")
        assert not any(ro.allows(t, c) for c in "wWD")
        assert not ao.allows(t, "W")
    for t in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT):
        assert ao.allows(t, "w") and not ao.allows(t, "D")
    assert not ao.allows(FileType.CONFIG, "w")
    assert ao.allows(FileType.LOCK, "D")
    assert not Permissions({FileType.DATA: "r"}).allows(FileType.INDEX, "r")  # missing type: nothing


def test_read_only_backend_refuses_every_change() -> None:
    mem = MemoryBackend()
    mem.save(H, b"old")
    ro = PermissionedBackend(mem, Permissions.read_only())
    assert ro.load(H) == b"old"
    assert [f.name for f in ro.list(FileType.DATA)] == [H.name]
    with pytest.raises(PermissionDenied, match="create"):
        ro.save(H2, b"new")
    with pytest.raises(PermissionDenied, match="delete"):
        ro.remove(H)
    assert [f.name for f in mem.list(FileType.INDEX)] == []
    assert mem.load(H) == b"old"


def test_write_only_credential_cannot_read_or_list() -> None:
    mem = MemoryBackend()
    wo = PermissionedBackend(mem, Permissions({FileType.DATA: "w"}))
    wo.save(H, b"x")
    with pytest.raises(PermissionDenied, match="read"):
        wo.load(H)
    with pytest.raises(PermissionDenied, match="list"):
        wo.stat(H)
    with pytest.raises(PermissionDenied, match="list"):
        wo.list(FileType.DATA)
    assert mem.load(H) == b"x"

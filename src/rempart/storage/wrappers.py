"""Behaviour added around any backend: permissions, retries, bandwidth limits, faults.

Each wrapper implements the same protocol and holds the backend it wraps (restic's model).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

from rempart.core.errors import AlreadyExists, TransientError
from rempart.storage.base import Backend, FileInfo, FileType, Handle, Permissions


class Wrapper:
    """A backend around another: every call passes through unless a subclass says otherwise."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.properties = inner.properties

    def save(self, h: Handle, data: bytes) -> None:
        self.inner.save(h, data)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.load(h, offset=offset, length=length)

    def stat(self, h: Handle) -> FileInfo:
        return self.inner.stat(h)

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        return self.inner.list(ftype)

    def remove(self, h: Handle) -> None:
        self.inner.remove(h)

    def close(self) -> None:
        self.inner.close()


class PermissionedBackend(Wrapper):
    """Refuses every operation whose permission letter the credential lacks."""

    def __init__(self, inner: Backend, permissions: Permissions) -> None:
        super().__init__(inner)
        self.permissions = permissions

    def save(self, h: Handle, data: bytes) -> None:
        self.permissions.require(h.type, "w", "create")
        self.inner.save(h, data)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        self.permissions.require(h.type, "r", "read")
        return self.inner.load(h, offset=offset, length=length)

    def stat(self, h: Handle) -> FileInfo:
        self.permissions.require(h.type, "l", "list")
        return self.inner.stat(h)

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        self.permissions.require(ftype, "l", "list")
        return self.inner.list(ftype)

    def remove(self, h: Handle) -> None:
        self.permissions.require(h.type, "D", "delete")
        self.inner.remove(h)


class RetryBackend(Wrapper):
    """Retries TransientError with exponential backoff and full jitter."""

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()

    def call(self, fn: Callable[[], object]) -> object:
        """``fn()``, tried again after a transient error, with backoff and jitter."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientError:
                if attempt == self.attempts - 1:
                    raise
                delay = min(self.max_delay, self.base_delay * 2**attempt)
                self._sleep(self._rng.uniform(0, delay))
        raise AssertionError("unreachable")  # pragma: no cover

    def save(self, h: Handle, data: bytes) -> None:
        attempts = [0]

        def once() -> None:
            attempts[0] += 1
            try:
                self.inner.save(h, data)
            except AlreadyExists:
                # an earlier attempt may have landed with its reply lost: for content-addressed
                # names the stored bytes are ours, so this is success
                if attempts[0] == 1 or h.type is FileType.CONFIG:
                    raise

        self.call(once)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        out = self.call(lambda: self.inner.load(h, offset=offset, length=length))
        assert isinstance(out, bytes)
        return out

    def stat(self, h: Handle) -> FileInfo:
        out = self.call(lambda: self.inner.stat(h))
        assert isinstance(out, FileInfo)
        return out

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        items = self.call(lambda: list(self.inner.list(ftype)))
        assert isinstance(items, list)
        return iter(items)


class TokenBucket:
    """A thread-safe token bucket measured in bytes per second."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = clock()

    def take(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next_free)
            self._next_free = start + n / self.rate
            wait = self._next_free - now - 1.0  # allow one second of burst
        if wait > 0:
            self._sleep(wait)


class LimitedBackend(Wrapper):
    """Caps upload (and optionally download) bandwidth, for slow ADSL links."""

    def __init__(self, inner: Backend, *, upload_bps: float | None, download_bps: float | None = None) -> None:
        super().__init__(inner)
        self._up = TokenBucket(upload_bps) if upload_bps else None
        self._down = TokenBucket(download_bps) if download_bps else None

    def save(self, h: Handle, data: bytes) -> None:
        if self._up:
            self._up.take(len(data))
        self.inner.save(h, data)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(h, offset=offset, length=length)
        if self._down:
            self._down.take(len(data))
        return data


class FaultyBackend(Wrapper):
    """Injects failures for tests: ``fail(op, times, exc)`` makes the next calls raise."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self._faults: dict[str, list[BaseException]] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def fail(self, op: str, times: int = 1, exc: BaseException | None = None) -> None:
        with self._lock:
            self._faults.setdefault(op, []).extend(
                [exc or TransientError(f"injected failure in {op}")] * times
            )

    def _check(self, op: str) -> None:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            pending = self._faults.get(op)
            if pending:
                raise pending.pop(0)

    def save(self, h: Handle, data: bytes) -> None:
        self._check("save")
        self.inner.save(h, data)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        self._check("load")
        return self.inner.load(h, offset=offset, length=length)

    def stat(self, h: Handle) -> FileInfo:
        self._check("stat")
        return self.inner.stat(h)

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        self._check("list")
        return self.inner.list(ftype)

    def remove(self, h: Handle) -> None:
        self._check("remove")
        self.inner.remove(h)


def beneath(backend: Backend) -> Backend:
    """The backend behind any permission checks and retries (wrappers that change nothing
    stored): e.g. to reach a local folder's own housekeeping."""
    while isinstance(backend, (PermissionedBackend, RetryBackend)):
        backend = backend.inner
    return backend

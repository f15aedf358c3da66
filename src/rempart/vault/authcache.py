"""Short-lived in-process caches for the hot object routes (each request used to cost three
database queries on three pooled connections: token, practice, object stat).

* :class:`TtlCache` maps a key to a value for ``ttl`` seconds of the vault clock's monotonic
  time. Only successes are cached: a wrong token always goes to the database (and to the audit
  trail and the failure limiter). Revoking a token in this process clears the token cache at
  once; a revocation written by another process takes effect within ``ttl`` seconds.
* Token entries are keyed by the SHA-256 of the whole token (the form stored in the database),
  never by the token itself, and a hit is confirmed with :func:`hmac.compare_digest` against
  the stored hash, as the database path does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

AUTH_TTL = 2.0  # seconds; revocation by another process takes effect within this
MAX_ENTRIES = 10_000


class TtlCache(Generic[V]):
    def __init__(self, monotonic: Callable[[], float], ttl: float = AUTH_TTL,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._now = monotonic
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= self._now():
            with self._lock:
                self._data.pop(key, None)
            return None
        return hit[1]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (self._now() + self.ttl, value)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

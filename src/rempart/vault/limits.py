"""Rate limits on authentication failures, with an injected clock.

* per client IP: after ``per_ip`` failures within ``window`` seconds, every request from that IP
  gets 429 until the window slides;
* per practice: after ``per_practice`` failures against one practice within the window, requests
  to that practice from any IP that has itself failed at least once get 429. An agent that never
  failed keeps working, so an attacker cannot lock a practice out by failing on purpose.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

from rempart.core.clock import Clock


class AuthFailureLimiter:
    def __init__(self, clock: Clock, *, per_ip: int, per_practice: int, window: float) -> None:
        self.clock = clock
        self.per_ip = per_ip
        self.per_practice = per_practice
        self.window = window
        self._ip: dict[str, deque[float]] = defaultdict(deque)
        self._practice: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, q: deque[float], now: float) -> int:
        while q and q[0] <= now - self.window:
            q.popleft()
        return len(q)

    def blocked(self, ip: str, practice: str | None) -> float:
        """Seconds to wait (0 = allowed)."""
        now = self.clock.monotonic()
        with self._lock:
            q = self._ip.get(ip)
            n_ip = self._trim(q, now) if q is not None else 0
            if self.per_ip and n_ip >= self.per_ip:
                return max(1.0, q[0] + self.window - now) if q else 1.0
            if practice and n_ip and self.per_practice:
                pq = self._practice.get(practice)
                if pq is not None and self._trim(pq, now) >= self.per_practice:
                    return max(1.0, pq[0] + self.window - now)
        return 0.0

    def failed(self, ip: str, practice: str | None) -> None:
        now = self.clock.monotonic()
        with self._lock:
            self._ip[ip].append(now)
            self._trim(self._ip[ip], now)
            if practice:
                self._practice[practice].append(now)
                self._trim(self._practice[practice], now)
            if len(self._ip) > 100_000:  # bound memory under a spray of addresses
                for k in [k for k, v in self._ip.items() if not v][:50_000]:
                    del self._ip[k]

"""Which snapshots the vault keeps: a pure function of snapshot records, a policy and the time.

Rules (restic's forget policy, decided by the vault on its own clock):

* every snapshot received less than ``min_age_days`` ago is kept, whatever else;
* ``keep_last`` N: the N newest *clean* snapshots (suspicious ones never count, so a burst of
  garbage snapshots cannot push the good ones out);
* ``hourly``/``daily``/``weekly``/``monthly``/``yearly`` N: the newest clean snapshot of each of
  the N most recent hours/days/... that hold a clean snapshot;
* a suspicious snapshot marked a false positive counts as clean;
* while the practice is frozen nothing is forgotten (the caller checks that).

Times are the *server* receive times, never the client's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from rempart.vault.config import RetentionPolicy


@dataclass(frozen=True)
class SnapRecord:
    name: str
    received: float  # server time, epoch seconds
    suspicious: bool = False


def _bucket_fns() -> list[tuple[str, Callable[[datetime], tuple[int, ...]]]]:
    return [
        ("hourly", lambda d: (d.year, d.month, d.day, d.hour)),
        ("daily", lambda d: (d.year, d.month, d.day)),
        ("weekly", lambda d: tuple(d.isocalendar()[:2])),
        ("monthly", lambda d: (d.year, d.month)),
        ("yearly", lambda d: (d.year,)),
    ]


def select_kept(records: Iterable[SnapRecord], policy: RetentionPolicy, now: float) -> tuple[set[str], dict[str, str]]:
    """Return (names to keep, reason per kept name)."""
    recs = sorted(records, key=lambda r: (r.received, r.name), reverse=True)
    reasons: dict[str, str] = {}
    min_age = policy.min_age_days * 86400.0
    for r in recs:
        if now - r.received < min_age:
            reasons.setdefault(r.name, "min-age")
    clean = [r for r in recs if not r.suspicious]
    for r in clean[: policy.keep_last]:
        reasons.setdefault(r.name, "last")
    for label, fn in _bucket_fns():
        n = getattr(policy, label)
        if n <= 0:
            continue
        seen: set[tuple[int, ...]] = set()
        for r in clean:
            key = fn(datetime.fromtimestamp(r.received, tz=UTC))
            if key in seen:
                continue
            if len(seen) >= n:
                break
            seen.add(key)
            reasons.setdefault(r.name, label)
    return set(reasons), reasons

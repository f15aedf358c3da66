"""Which snapshots a retention policy keeps: a pure function of (name, time, suspicious) records,
a policy and the time. No key, no storage: the vault (``rempart.vault.retention``) and the
``rempart forget`` command both decide with this one function.

Rules (restic's forget policy, plus Rempart's safety rules):

* ``min_age``: every snapshot younger than this (against ``now``) is kept, whatever else;
* ``within``: every snapshot taken within this duration of the *newest* snapshot is kept
  (restic's ``--keep-within``);
* ``last`` N: the N newest *clean* snapshots. Suspicious ones never count, so a burst of
  garbage snapshots written by ransomware cannot push the good ones out;
* ``hourly``/``daily``/``weekly``/``monthly``/``yearly`` N: the newest clean snapshot of each of
  the N most recent hours/days/ISO weeks/months/years (UTC) that hold a clean snapshot.

A snapshot is kept if any rule keeps it; the reasons are reported in rule order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rempart.core.errors import UserError

BUCKETS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda d: (d.year, d.month, d.day, d.hour)),
    ("daily", lambda d: (d.year, d.month, d.day)),
    ("weekly", lambda d: tuple(d.isocalendar()[:2])),
    ("monthly", lambda d: (d.year, d.month)),
    ("yearly", lambda d: (d.year,)),
)

_DURATION = re.compile(r"(\d+)([ymwdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration like restic's ``1y5m7d2h`` (years, months, weeks, days, hours)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        s = text.strip().lower()
        if not s or _DURATION.sub("", s):
            raise UserError(f"invalid duration {text[:40]!r}", hint="use e.g. 7d, 2w, 1y6m or 36h")
        parts = {"y": 0, "m": 0, "w": 0, "d": 0, "h": 0}
        for num, unit in _DURATION.findall(s):
            parts[unit] += int(num)
        if parts["y"] > 1000 or parts["m"] > 12000 or parts["w"] > 52000 or parts["d"] > 365000:
            raise UserError(f"duration {text[:40]!r} is too long")
        return cls(parts["y"], parts["m"], parts["w"] * 7 + parts["d"], parts["h"])

    def __bool__(self) -> bool:
        return bool(self.years or self.months or self.days or self.hours)

    def before(self, t: float) -> float:
        """The epoch time this duration before ``t`` (calendar months and years, UTC)."""
        d = datetime.fromtimestamp(t, tz=UTC)
        months = d.year * 12 + (d.month - 1) - self.years * 12 - self.months
        year, month = max(1, months // 12), months % 12 + 1
        day = d.day
        while True:  # 31 March minus one month is the last day of February
            try:
                d = d.replace(year=year, month=month, day=day)
                break
            except ValueError:
                day -= 1
        return (d - timedelta(days=self.days, hours=self.hours)).timestamp()

    def __str__(self) -> str:
        out = "".join(f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"),
                                             (self.hours, "h")) if n)
        return out or "0h"


@dataclass(frozen=True)
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    #: keep every snapshot within this duration of the newest one
    within: Duration = Duration()
    #: keep every snapshot younger than this many seconds (against ``now``)
    min_age: float = 0.0

    def keeps_nothing(self) -> bool:
        """True when no rule would keep any snapshot."""
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within or self.min_age > 0)

    def to_dict(self) -> dict[str, object]:
        return {"last": self.last, "hourly": self.hourly, "daily": self.daily, "weekly": self.weekly,
                "monthly": self.monthly, "yearly": self.yearly, "within": str(self.within) if self.within else None,
                "min_age_seconds": self.min_age}


@dataclass(frozen=True)
class SnapRecord:
    name: str
    time: float  # epoch seconds (the vault passes its own receive time, never the client's)
    suspicious: bool = False

    @property
    def received(self) -> float:
        """The vault's name for ``time``."""
        return self.time


def keep_reasons(records: Iterable[SnapRecord], policy: KeepPolicy, now: float) -> dict[str, list[str]]:
    """Names of the kept snapshots, each with the rules that keep it (in rule order)."""
    recs = sorted(records, key=lambda r: (r.time, r.name), reverse=True)
    reasons: dict[str, list[str]] = {}

    def keep(r: SnapRecord, why: str) -> None:
        reasons.setdefault(r.name, []).append(why)

    for r in recs:  # (with min_age 0 this keeps only snapshots dated in the future)
        if now - r.time < policy.min_age:
            keep(r, "min-age")
    if policy.within and recs:
        cutoff = policy.within.before(recs[0].time)
        for r in recs:
            if r.time >= cutoff:
                keep(r, "within")
    clean = [r for r in recs if not r.suspicious]
    for r in clean[: policy.last]:
        keep(r, "last")
    for label, fn in BUCKETS:
        n = getattr(policy, label)
        if n <= 0:
            continue
        seen: set[tuple[int, ...]] = set()
        for r in clean:
            key = fn(datetime.fromtimestamp(r.time, tz=UTC))
            if key in seen:
                continue
            if len(seen) >= n:
                break
            seen.add(key)
            keep(r, label)
    return reasons

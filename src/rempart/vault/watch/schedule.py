"""When is a practice's next backup due? Pure functions of an expectation and two instants.

An expectation says: one snapshot every ``every`` seconds during opening hours (local time of
the practice), and never more than ``max_gap`` seconds without one whatever the hours. A backup
is *due* at ``min(next_open(last + every), last + max_gap)``; the practice is *late* once
``due + grace`` has passed and *missing* once ``due + missing_after`` has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rempart.core.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_hours(text: str) -> tuple[int, int] | None:
    """``"08:00-19:00"`` -> (480, 1140) minutes; ``""`` -> None (always open)."""
    text = text.strip()
    if not text:
        return None
    try:
        a, b = text.split("-")
        ha, ma = (int(x) for x in a.strip().split(":"))
        hb, mb = (int(x) for x in b.strip().split(":"))
    except ValueError as exc:
        raise ConfigError(f"opening hours {text!r}: expected HH:MM-HH:MM") from exc
    start, end = ha * 60 + ma, hb * 60 + mb
    if not (0 <= start < end <= 24 * 60) or not (0 <= ma < 60 and 0 <= mb < 60):
        raise ConfigError(f"opening hours {text!r}: start must be before end, within one day")
    return start, end


def parse_days(text: str) -> frozenset[int]:
    """``"mon-fri"``, ``"mon,wed,sat"`` or ``"mon-fri,sat"`` -> weekday numbers (Monday = 0)."""
    out: set[int] = set()
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise ConfigError(f"opening days {text!r}: use mon..sun")
            i, j = DAYS.index(a), DAYS.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part in DAYS:
            out.add(DAYS.index(part))
        else:
            raise ConfigError(f"opening days {text!r}: use mon..sun")
    if not out:
        raise ConfigError("opening days must name at least one day")
    return frozenset(out)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True)
class Expectation:
    every: float = 3600.0
    grace: float = 900.0
    missing_after: float = 14400.0
    max_gap: float = 86400.0
    hours: tuple[int, int] | None = (8 * 60, 19 * 60)
    days: frozenset[int] = frozenset(range(6))
    tz: str = "Europe/Paris"

    def describe(self, lang: str = "en") -> str:
        fr = lang == "fr"
        h = ("toute la journée" if fr else "all day") if self.hours is None else (
            f"{self.hours[0] // 60:02d}:{self.hours[0] % 60:02d}-{self.hours[1] // 60:02d}:{self.hours[1] % 60:02d}")
        days = ",".join(DAYS[d] for d in sorted(self.days))
        every = _dur(self.every)
        gap = f", {'au moins toutes les' if fr else 'at least every'} {_dur(self.max_gap)}" if self.max_gap else ""
        return (f"{'une sauvegarde toutes les' if fr else 'one backup every'} {every}, {h}, {days} ({self.tz}){gap}; "
                f"{'retard après' if fr else 'late after'} +{_dur(self.grace)}, "
                f"{'manquante après' if fr else 'missing after'} +{_dur(self.missing_after)}")


def _dur(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0 and s >= 3600:
        return f"{s // 3600} h"
    if s % 60 == 0 and s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


def next_open(exp: Expectation, t: datetime) -> datetime:
    """The first instant >= t inside opening hours (t itself when open or always open)."""
    if exp.hours is None:
        return t
    start, end = exp.hours
    local = t.astimezone(zone(exp.tz))
    for d in range(8):
        day = (local + timedelta(days=d)).date()
        if day.weekday() not in exp.days:
            continue
        opens = datetime(day.year, day.month, day.day, start // 60, start % 60, tzinfo=local.tzinfo)
        closes = (datetime(day.year, day.month, day.day, tzinfo=local.tzinfo) + timedelta(minutes=end))
        if local < opens:
            return opens.astimezone(t.tzinfo)
        if local < closes:
            return t
    return t  # pragma: no cover - days is never empty


def due_at(exp: Expectation, last: datetime) -> datetime:
    due = next_open(exp, last + timedelta(seconds=exp.every))
    if exp.max_gap:
        due = min(due, last + timedelta(seconds=exp.max_gap))
    return due


def silence_level(exp: Expectation, last: datetime, now: datetime) -> str | None:
    """``None`` while on time, ``"late"`` after due + grace, ``"missing"`` after due + missing_after."""
    due = due_at(exp, last)
    waited = (now - due).total_seconds()
    if waited >= exp.missing_after:
        return "missing"
    if waited >= exp.grace:
        return "late"
    return None

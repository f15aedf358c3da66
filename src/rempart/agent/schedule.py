"""When the next backup is due: pure functions of the settings, the persisted state and now.

* During opening hours on opening days, a run every ``interval_minutes`` after the last one.
* Every day (also week-ends) one run at ``daily_at`` (the practice PC may be off at night: a
  missed run is due as soon as the agent starts again).
* A failed attempt is retried after an exponential backoff with jitter, at most
  ``retry_attempts`` times; then the agent waits for the next regular slot.
* No last run (first start after enrollment): due now.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime

from rempart.agent.config import ScheduleSettings


def resolve_zone(name: str) -> tzinfo:
    """The configured IANA zone, or the machine's local zone (edge code only), DST included."""
    if name:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    return SystemLocalZone()


class SystemLocalZone(tzinfo):
    """The operating system's local time, asked per instant (so daylight saving changes apply
    without a restart; works on Windows without the tz database). Python docs' LocalTimezone."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(seconds=self._tm(dt).tm_gmtoff)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1) if self._tm(dt).tm_isdst > 0 else timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return self._tm(dt).tm_zone

    def fromutc(self, dt: datetime) -> datetime:
        stamp = (dt.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds()
        tm = time.localtime(stamp)
        return datetime(*tm[:6], microsecond=dt.microsecond, tzinfo=self)

    @staticmethod
    def _tm(dt: datetime | None) -> time.struct_time:
        if dt is None:
            return time.localtime()
        return time.localtime(time.mktime((dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second,
                                           dt.weekday(), 0, -1)))


def _at(day: date, t: dtime, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, t.hour, t.minute, tzinfo=tz)


def next_open(settings: ScheduleSettings, tz: tzinfo, after: datetime) -> datetime | None:
    """The earliest instant >= ``after`` inside opening hours on an opening day."""
    if not settings.days:
        return None
    local = after.astimezone(tz)
    for d in range(8):
        day = local.date() + timedelta(days=d)
        if day.weekday() not in settings.days:
            continue
        start, end = _at(day, settings.opening_start, tz), _at(day, settings.opening_end, tz)
        if d == 0:
            if local < end:
                return max(local, start)
            continue
        return start
    return None  # pragma: no cover - a non-empty day set always matches within a week


def next_daily(settings: ScheduleSettings, tz: tzinfo, after: datetime) -> datetime | None:
    """The first ``daily_at`` strictly after ``after``."""
    if settings.daily_at is None:
        return None
    local = after.astimezone(tz)
    cand = _at(local.date(), settings.daily_at, tz)
    if cand <= local:
        cand = _at(local.date() + timedelta(days=1), settings.daily_at, tz)
    return cand


def next_due(settings: ScheduleSettings, tz: tzinfo, last_start: datetime | None,
             retry_at: datetime | None = None) -> datetime | None:
    """When the next run is due (may be in the past: then run now). None only if nothing is
    scheduled at all (excluded by config validation)."""
    if retry_at is not None:
        return retry_at
    if last_start is None:
        return datetime(2000, 1, 1, tzinfo=UTC)  # long past: due now
    cands = [
        next_open(settings, tz, last_start + timedelta(minutes=settings.interval_minutes)),
        next_daily(settings, tz, last_start),
    ]
    found = [c for c in cands if c is not None]
    return min(found) if found else None


def backoff(settings: ScheduleSettings, failures: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``failures`` (1-based): exponential, jittered
    between half and all of the step so that many agents do not retry in lockstep."""
    step = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(0, failures - 1))
    return rng.uniform(step / 2, step)

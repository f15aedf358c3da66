"""The schedule as pure functions: opening hours, daily run, missed runs, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from rempart.agent.config import ScheduleSettings
from rempart.agent.schedule import backoff, next_due

S = ScheduleSettings()  # every 60 min 07:00-20:00 Mon-Fri, daily 21:30
MON = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday


def at(day: int, h: int, m: int = 0) -> datetime:
    return MON + timedelta(days=day, hours=h, minutes=m)


def test_first_start_is_due_immediately() -> None:
    assert next_due(S, UTC, None) <= at(0, 0)


def test_interval_within_opening_hours() -> None:
    assert next_due(S, UTC, at(0, 9)) == at(0, 10)
    assert next_due(S, UTC, at(0, 9, 30)) == at(0, 10, 30)


def test_evening_goes_to_daily_run_then_next_morning() -> None:
    assert next_due(S, UTC, at(0, 19, 30)) == at(0, 21, 30)  # 20:30 is closed: the daily run
    assert next_due(S, UTC, at(0, 21, 30)) == at(1, 7)       # Tuesday opening


def test_weekend_has_only_the_daily_run() -> None:
    friday_daily = at(4, 21, 30)
    assert next_due(S, UTC, friday_daily) == at(5, 21, 30)    # Saturday
    assert next_due(S, UTC, at(6, 21, 30)) == at(7, 7)        # Sunday daily -> Monday 07:00


def test_missed_run_is_due_in_the_past_so_it_runs_at_once() -> None:
    # PC off from Monday 10:00 to Wednesday: the due time is long past
    assert next_due(S, UTC, at(0, 10)) < at(2, 8)


def test_retry_overrides_schedule() -> None:
    assert next_due(S, UTC, at(0, 9), retry_at=at(0, 9, 2)) == at(0, 9, 2)


def test_other_time_zone_opening_hours_are_local() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")  # UTC+1 in January
    due = next_due(S, paris, datetime(2026, 1, 5, 19, 30, tzinfo=UTC))  # 20:30 Paris: closed
    assert due == datetime(2026, 1, 5, 21, 30, tzinfo=paris)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    s = ScheduleSettings(retry_base_seconds=10, retry_max_seconds=100)
    rng = random.Random(1)
    d = [[backoff(s, k, rng) for _ in range(50)] for k in (1, 2, 3, 6)]
    assert all(5 <= x <= 10 for x in d[0]) and all(10 <= x <= 20 for x in d[1])
    assert all(20 <= x <= 40 for x in d[2]) and all(50 <= x <= 100 for x in d[3])
    assert len({round(x, 6) for x in d[0]}) > 40  # jittered, not lockstep


def test_system_local_zone_follows_daylight_saving() -> None:
    import os
    import time as _time

    from rempart.agent.schedule import SystemLocalZone

    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    _time.tzset()
    try:
        z = SystemLocalZone()
        winter = datetime(2026, 1, 15, 12, tzinfo=UTC).astimezone(z)
        summer = datetime(2026, 7, 15, 12, tzinfo=UTC).astimezone(z)
        assert (winter.hour, summer.hour) == (13, 14)
        # opening hours are local: Monday 2026-07-06 07:00 in Paris is 05:00 UTC
        due = next_due(S, z, datetime(2026, 7, 3, 21, 30, tzinfo=z), None)  # Friday after the daily run
        assert due is not None and due.astimezone(UTC) == datetime(2026, 7, 4, 19, 30, tzinfo=UTC)  # Sat daily
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        _time.tzset()


def test_first_run_due_now_in_the_system_zone() -> None:
    from rempart.agent.schedule import SystemLocalZone

    due = next_due(S, SystemLocalZone(), None)
    assert due is not None and due < datetime.now(UTC)

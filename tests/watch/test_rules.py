"""Clock-driven tests of the pure schedule and alert state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rempart.core.clock import FakeClock
from rempart.core.errors import ConfigError
from rempart.vault.watch.rules import (
    AlertState,
    DrillFact,
    Facts,
    Policy,
    RunFact,
    conditions,
    status_light,
    step,
)
from rempart.vault.watch.schedule import Expectation, due_at, parse_days, parse_hours, silence_level

PARIS_HOURLY = Expectation(every=3600, grace=900, missing_after=4 * 3600, max_gap=86400,
                           hours=(8 * 60, 19 * 60), days=parse_days("mon-fri"), tz="Europe/Paris")
ALWAYS = Expectation(every=3600, grace=600, missing_after=3 * 3600, max_gap=0, hours=None,
                     days=frozenset(range(7)), tz="UTC")


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_parse_hours_and_days() -> None:
    assert parse_hours("08:00-19:30") == (480, 1170)
    assert parse_hours("") is None
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat-mon") == frozenset({5, 6, 0})
    for bad in ("19:00-08:00", "8h-19h", "08:00-25:00"):
        with pytest.raises(ConfigError):
            parse_hours(bad)
    with pytest.raises(ConfigError):
        parse_days("lundi")


def test_due_inside_and_outside_opening_hours() -> None:
    # Monday 2026-01-05, Paris is UTC+1 in winter: 10:00 local = 09:00 UTC
    assert due_at(PARIS_HOURLY, utc(2026, 1, 5, 9, 0)) == utc(2026, 1, 5, 10, 0)
    # last backup 18:30 local Monday -> next due at opening 08:00 local Tuesday (07:00 UTC)
    assert due_at(PARIS_HOURLY, utc(2026, 1, 5, 17, 30)) == utc(2026, 1, 6, 7, 0)
    # Friday 18:30 local: Monday opening is 2.5 days away, the daily minimum wins (Saturday 18:30 local)
    assert due_at(PARIS_HOURLY, utc(2026, 1, 9, 17, 30)) == utc(2026, 1, 10, 17, 30)


def test_silence_levels_move_with_the_clock() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    last = clock.now()
    assert silence_level(ALWAYS, last, clock.now()) is None
    clock.advance(3600 + 599)
    assert silence_level(ALWAYS, last, clock.now()) is None
    clock.advance(1)
    assert silence_level(ALWAYS, last, clock.now()) == "late"
    clock.advance(3 * 3600 - 600 - 1)
    assert silence_level(ALWAYS, last, clock.now()) == "late"
    clock.advance(1)
    assert silence_level(ALWAYS, last, clock.now()) == "missing"


def test_night_is_not_late() -> None:
    last = utc(2026, 1, 5, 17, 50)  # 18:50 Paris, last backup of the day
    assert silence_level(PARIS_HOURLY, last, utc(2026, 1, 6, 6, 59)) is None  # 07:59 Paris
    assert silence_level(PARIS_HOURLY, last, utc(2026, 1, 6, 7, 15)) == "late"


class Sim:
    """Drives conditions + step like the engine does, keeping alert state in memory."""

    def __init__(self, clock: FakeClock, policy: Policy, exp: Expectation = ALWAYS) -> None:
        self.clock, self.policy, self.exp = clock, policy, exp
        self.open: dict[str, AlertState] = {}
        self.sent: list[tuple[str, str, str, tuple[str, ...]]] = []
        self.next_id = 1

    def run(self, facts: Facts) -> list[tuple[str, str, str, tuple[str, ...]]]:
        now = self.clock.now()
        acts = step(self.open, conditions(facts, self.exp, now, self.policy), now, self.policy)
        out = []
        for a in acts:
            if a.kind == "open":
                self.open[a.group] = AlertState(self.next_id, a.group, a.level, now, now if a.escalate_now else None, now)
                self.next_id += 1
            elif a.kind == "resolve":
                del self.open[a.group]
            else:
                cur = self.open[a.group]
                escalated = now if (a.kind == "escalate" or a.escalate_now) else cur.escalated
                level = a.level if a.kind == "worsen" else cur.level
                self.open[a.group] = AlertState(cur.id, a.group, level, cur.opened, escalated, now)
            out.append((a.kind, a.group, a.level, a.audiences))
        self.sent += out
        return out


def test_late_missing_escalate_resolve_with_dedup() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=2 * 3600))
    created = clock.now()
    facts = Facts("dentiste", created=created, last_snapshot=clock.now())
    assert sim.run(facts) == []
    clock.advance(3600 + 600)
    assert sim.run(facts) == [("open", "silence", "late", ("practice",))]
    for _ in range(5):  # deduplicated: evaluating again sends nothing
        clock.advance(60)
        assert sim.run(facts) == []
    clock.advance(2 * 3600 - 300)  # 2h after opening: escalated to the IT provider
    assert sim.run(facts) == [("escalate", "silence", "late", ("provider",))]
    clock.advance(3600)
    assert sim.run(facts) == [("worsen", "silence", "missing", ("practice", "provider"))]
    clock.advance(3600)
    assert sim.run(facts) == []
    back = Facts("dentiste", created=created, last_snapshot=clock.now())
    assert sim.run(back) == [("resolve", "silence", "missing", ("practice", "provider"))]
    assert sim.run(back) == []
    assert sim.open == {}


def test_resolved_before_escalation_goes_to_practice_only() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=4 * 3600))
    start = clock.now()
    clock.advance(3600 + 600)
    assert sim.run(Facts("p", created=start, last_snapshot=start))[0][:3] == ("open", "silence", "late")
    assert sim.run(Facts("p", created=start, last_snapshot=clock.now())) == [
        ("resolve", "silence", "late", ("practice",))]


def test_failed_run_then_success() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=3600))
    start = clock.now()
    clock.advance(60)
    failed = Facts("p", created=start, last_snapshot=start, last_run=RunFact(clock.now(), "failed", "SourceError"))
    assert sim.run(failed) == [("open", "failed", "failed", ("practice",))]
    clock.advance(60)
    ok = Facts("p", created=start, last_snapshot=clock.now(), last_run=failed.last_run)
    assert sim.run(ok) == [("resolve", "failed", "failed", ("practice",))]


def test_suspicious_is_urgent_and_frozen_quota_conditions() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=3600, urgent=frozenset({"suspicious"}), quota_ratio=0.9))
    f = Facts("p", created=clock.now(), last_snapshot=clock.now(), suspicious=True, suspicious_count=1,
              frozen=True, frozen_reason="suspicious snapshot received", used_bytes=95, quota_bytes=100)
    out = sim.run(f)
    assert ("open", "suspicious", "suspicious", ("practice", "provider")) in out
    assert ("open", "frozen", "frozen", ("practice",)) in out
    assert ("open", "quota", "quota", ("practice",)) in out
    assert status_light(conditions(f, ALWAYS, clock.now(), sim.policy)) == "red"
    released = Facts("p", created=f.created, last_snapshot=clock.now(), used_bytes=50, quota_bytes=100)
    kinds = sorted((k, g) for k, g, _, _ in sim.run(released))
    assert kinds == [("resolve", "frozen"), ("resolve", "quota"), ("resolve", "suspicious")]


def test_quota_below_threshold_and_lights() -> None:
    now = utc(2026, 1, 5, 12, 0)
    f = Facts("p", created=now, last_snapshot=now, used_bytes=89, quota_bytes=100)
    assert conditions(f, ALWAYS, now, Policy(quota_ratio=0.9)) == {}
    assert status_light({}) == "green"
    assert status_light(["late"]) == "orange"
    assert status_light(["late", "missing"]) == "red"
    assert status_light(["quota"]) == "orange"


def test_a_failed_restore_drill_is_red_until_a_later_drill_passes() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=3600))
    ok = Facts("p", created=clock.now(), last_snapshot=clock.now(),
               last_drill=DrillFact(clock.now(), "ok", "ab" * 32))
    assert sim.run(ok) == []
    failed = Facts("p", created=ok.created, last_snapshot=clock.now(),
                   last_drill=DrillFact(clock.now(), "failed", "ab" * 32, "IntegrityError"))
    cond = conditions(failed, ALWAYS, clock.now(), sim.policy)
    assert set(cond) == {"drill"} and cond["drill"].detail["error_class"] == "IntegrityError"
    assert status_light(cond) == "red"
    assert sim.run(failed) == [("open", "drill", "drill", ("practice",))]
    clock.advance(3600)  # nobody fixed it within the hour: the provider is told
    assert sim.run(Facts("p", created=ok.created, last_snapshot=clock.now(), last_drill=failed.last_drill)) == [
        ("escalate", "drill", "drill", ("provider",))]
    passed = Facts("p", created=ok.created, last_snapshot=clock.now(),
                   last_drill=DrillFact(clock.now(), "ok", "cd" * 32))
    assert sim.run(passed) == [("resolve", "drill", "drill", ("practice", "provider"))]


def test_damaged_storage_is_red_and_clears_when_the_scrub_finds_it_right() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=3600))
    bad = Facts("p", created=clock.now(), last_snapshot=clock.now(), damaged_objects=3)
    cond = conditions(bad, ALWAYS, clock.now(), sim.policy)
    assert set(cond) == {"damage"} and cond["damage"].detail == {"objects": 3} and status_light(cond) == "red"
    assert sim.run(bad) == [("open", "damage", "damage", ("practice",))]
    fine = Facts("p", created=bad.created, last_snapshot=clock.now())
    assert sim.run(fine) == [("resolve", "damage", "damage", ("practice",))]


def test_never_backed_up_counts_from_creation() -> None:
    now = utc(2026, 1, 5, 12, 0)
    f = Facts("p", created=now - timedelta(hours=2))
    assert conditions(f, ALWAYS, now, Policy())["silence"].level == "late"


def test_opening_time_across_daylight_saving_change() -> None:
    # Saturday 2026-03-28 18:30 Paris (UTC+1); Paris moves to UTC+2 on Sunday 29 March.
    exp = Expectation(every=3600, grace=900, missing_after=14400, max_gap=0, hours=(8 * 60, 19 * 60),
                      days=parse_days("mon-sat"), tz="Europe/Paris")
    # next opening: Monday 30 March 08:00 Paris = 06:00 UTC (summer time)
    assert due_at(exp, utc(2026, 3, 28, 17, 30)) == utc(2026, 3, 30, 6, 0)


def test_urgent_level_reached_by_worsening_tells_the_provider_at_once() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=10 * 3600, urgent=frozenset({"missing"})))
    start = clock.now()
    facts = Facts("p", created=start, last_snapshot=start)
    clock.advance(3600 + 600)
    assert sim.run(facts) == [("open", "silence", "late", ("practice",))]
    clock.advance(3 * 3600)
    assert sim.run(facts) == [("worsen", "silence", "missing", ("practice", "provider"))]
    clock.advance(10 * 3600)
    assert sim.run(facts) == []  # already escalated with the worsening: no second escalation


def test_reminders_while_an_alert_stays_open() -> None:
    clock = FakeClock(utc(2026, 1, 5, 12, 0))
    sim = Sim(clock, Policy(escalate_after=3600, remind_after=86400))
    start = clock.now()
    facts = Facts("p", created=start, last_snapshot=start)
    clock.advance(3600 + 600)
    sim.run(facts)
    clock.advance(3600)
    assert sim.run(facts) == [("escalate", "silence", "late", ("provider",))]
    clock.advance(3 * 3600)
    assert sim.run(facts) == [("worsen", "silence", "missing", ("practice", "provider"))]
    clock.advance(86400 - 60)
    assert sim.run(facts) == []
    clock.advance(60)  # a day after the last notification: everyone told is reminded, once a day
    assert sim.run(facts) == [("remind", "silence", "missing", ("practice", "provider"))]
    clock.advance(3600)
    assert sim.run(facts) == []
    clock.advance(86400)
    assert sim.run(facts) == [("remind", "silence", "missing", ("practice", "provider"))]
    off = Sim(clock, Policy(remind_after=0))
    off.open = dict(sim.open)
    clock.advance(10 * 86400)
    assert off.run(facts) == []

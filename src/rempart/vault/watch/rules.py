"""The alert state machine, as pure functions: facts about a practice + the open alerts + the
time -> the actions to take (open, worsen, escalate, resolve). No I/O, no clock of its own.

Alerts are keyed by (practice, group): ``silence`` (level ``late`` then ``missing``), ``failed``,
``suspicious``, ``quota``, ``frozen``. An open alert is never opened twice (deduplication); it is
first sent to the practice's contacts, then escalated to the IT provider once it has stayed open
``escalate_after`` seconds (at once for urgent kinds); while it stays open, everyone told is
reminded every ``remind_after`` seconds (silence must not become normal); when its condition
clears, a ``resolved`` notification goes to everyone who was told about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rempart.vault.watch.schedule import Expectation, silence_level

SEVERITY = {"late": 1, "quota": 1, "failed": 2, "missing": 3, "frozen": 3, "drill": 3, "damage": 3, "suspicious": 4}


@dataclass(frozen=True)
class RunFact:
    received: datetime
    outcome: str  # ok | failed | partial
    error_class: str | None = None


@dataclass(frozen=True)
class DrillFact:
    """The practice's latest restore drill."""

    time: datetime
    outcome: str  # ok | failed
    snapshot: str | None = None
    error_class: str | None = None


@dataclass(frozen=True)
class Facts:
    """What the vault knows about one practice (plain metadata only)."""

    practice: str
    created: datetime
    last_snapshot: datetime | None = None
    last_run: RunFact | None = None
    suspicious: bool = False
    suspicious_count: int = 0
    used_bytes: int = 0
    quota_bytes: int = 0
    frozen: bool = False
    frozen_reason: str | None = None
    last_drill: DrillFact | None = None
    damaged_objects: int = 0  # stored objects the vault's last scrub found damaged or missing


@dataclass(frozen=True)
class Policy:
    escalate_after: float = 14400.0
    urgent: frozenset[str] = frozenset({"suspicious"})
    quota_ratio: float = 0.9
    remind_after: float = 86400.0  # 0 = never remind


@dataclass(frozen=True)
class Condition:
    group: str
    level: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertState:
    """An open alert as stored."""

    id: int
    group: str
    level: str
    opened: datetime
    escalated: datetime | None = None
    notified: datetime | None = None  # last notification about it (None: when opened)


@dataclass(frozen=True)
class Action:
    kind: str  # open | worsen | escalate | remind | resolve
    group: str
    level: str
    audiences: tuple[str, ...]  # "practice", "provider"
    detail: dict[str, Any] = field(default_factory=dict)
    alert_id: int | None = None
    escalate_now: bool = False


def conditions(facts: Facts, exp: Expectation, now: datetime, policy: Policy) -> dict[str, Condition]:
    out: dict[str, Condition] = {}
    since = facts.last_snapshot or facts.created
    level = silence_level(exp, since, now)
    if level:
        out["silence"] = Condition("silence", level, {
            "last_snapshot": facts.last_snapshot.isoformat() if facts.last_snapshot else None,
            "hours_without_backup": round((now - since).total_seconds() / 3600, 1)})
    run = facts.last_run
    if run and run.outcome in ("failed", "partial") and (facts.last_snapshot is None or run.received > facts.last_snapshot):
        out["failed"] = Condition("failed", "failed", {"outcome": run.outcome, "error_class": run.error_class})
    if facts.suspicious:
        out["suspicious"] = Condition("suspicious", "suspicious", {"snapshots": facts.suspicious_count})
    if facts.quota_bytes and facts.used_bytes >= policy.quota_ratio * facts.quota_bytes:
        out["quota"] = Condition("quota", "quota", {
            "used_bytes": facts.used_bytes, "quota_bytes": facts.quota_bytes,
            "percent": round(100 * facts.used_bytes / facts.quota_bytes, 1)})
    if facts.frozen:
        out["frozen"] = Condition("frozen", "frozen", {"reason": facts.frozen_reason or ""})
    drill = facts.last_drill
    if drill is not None and drill.outcome == "failed":  # open until a later drill passes
        out["drill"] = Condition("drill", "drill", {"snapshot": drill.snapshot, "error_class": drill.error_class,
                                                    "drill_time": drill.time.isoformat()})
    if facts.damaged_objects:
        out["damage"] = Condition("damage", "damage", {"objects": facts.damaged_objects})
    return out


def step(open_alerts: dict[str, AlertState], conds: dict[str, Condition], now: datetime,
         policy: Policy) -> list[Action]:
    """Compare the open alerts with the current conditions and say what to do."""
    actions: list[Action] = []
    for group, cond in conds.items():
        urgent = cond.level in policy.urgent or group in policy.urgent or policy.escalate_after <= 0
        cur = open_alerts.get(group)
        if cur is None:
            aud = ("practice", "provider") if urgent else ("practice",)
            actions.append(Action("open", group, cond.level, aud, cond.detail, escalate_now=urgent))
            continue
        told = ("practice", "provider") if cur.escalated or urgent else ("practice",)
        if SEVERITY.get(cond.level, 0) > SEVERITY.get(cur.level, 0):
            actions.append(Action("worsen", group, cond.level, told, cond.detail, alert_id=cur.id,
                                  escalate_now=urgent and cur.escalated is None))
            if urgent:
                continue
        if cur.escalated is None and (urgent or (now - cur.opened).total_seconds() >= policy.escalate_after):
            actions.append(Action("escalate", group, cond.level, ("provider",), cond.detail, alert_id=cur.id))
            continue
        if SEVERITY.get(cond.level, 0) > SEVERITY.get(cur.level, 0):
            continue
        last = cur.notified or cur.opened
        if policy.remind_after > 0 and (now - last).total_seconds() >= policy.remind_after:
            actions.append(Action("remind", group, cur.level, told, cond.detail, alert_id=cur.id))
    for group, cur in open_alerts.items():
        if group not in conds:
            told = ("practice", "provider") if cur.escalated else ("practice",)
            actions.append(Action("resolve", group, cur.level, told, {}, alert_id=cur.id))
    return actions


def status_light(conds: dict[str, Condition] | list[str]) -> str:
    """green (nothing), orange (late, quota, failed) or red (missing, suspicious, frozen, a failed
    restore drill, damaged storage)."""
    levels = [c.level for c in conds.values()] if isinstance(conds, dict) else list(conds)
    worst = max((SEVERITY.get(level, 0) for level in levels), default=0)
    return "red" if worst >= 3 else "orange" if worst >= 1 else "green"

"""The alert engine: reads plain facts from the vault's database, runs the pure state machine
(:mod:`rules`) and records alert changes and the notifications to send in one transaction
(a transactional outbox: a crash never loses or duplicates a notification decision).
Sending is done by :mod:`dispatch`. Alert history lives in ``watch_alerts`` (shown on the
dashboard); the vault's audit trail records the human actions (logins, freeze, release)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.clock import to_iso
from rempart.vault import db
from rempart.vault.scrub import damaged_count
from rempart.vault.service import Vault
from rempart.vault.watch import settings as st
from rempart.vault.watch import tables as t
from rempart.vault.watch.config import WatchConfig
from rempart.vault.watch.drills import latest_drill
from rempart.vault.watch.rules import (
    Action,
    AlertState,
    Condition,
    DrillFact,
    Facts,
    Policy,
    RunFact,
    conditions,
    status_light,
    step,
)

log = logging.getLogger("rempart.vault.watch")

EVENT_OF = {"open": "opened", "worsen": "worsened", "escalate": "escalated", "remind": "reminder",
            "resolve": "resolved", "closed": "closed"}


def ts(x: float | None) -> datetime | None:
    return None if x is None else datetime.fromtimestamp(x, UTC)


def policy_of(cfg: WatchConfig) -> Policy:
    return Policy(escalate_after=cfg.escalate_after_seconds, urgent=frozenset(cfg.urgent_kinds),
                  quota_ratio=cfg.quota_warn_ratio, remind_after=cfg.remind_after_seconds)


def facts_of(conn: Connection, row: Any) -> Facts:
    """Facts about one practice row of ``db.practices``."""
    pid = row.id
    run = conn.execute(sa.select(db.runs).where(db.runs.c.practice_id == pid)
                       .order_by(db.runs.c.id.desc()).limit(1)).first()
    latest = conn.execute(sa.select(db.snapshots.c.verdict, db.snapshots.c.false_positive).where(
        db.snapshots.c.practice_id == pid, db.snapshots.c.state == "kept",
    ).order_by(db.snapshots.c.received.desc()).limit(1)).first()
    suspicious = bool(latest and latest.verdict == "suspicious" and not latest.false_positive)
    count = 0
    if row.frozen and row.frozen_at is not None:
        count = int(conn.execute(sa.select(sa.func.count()).select_from(db.snapshots).where(
            db.snapshots.c.practice_id == pid, db.snapshots.c.verdict == "suspicious",
            db.snapshots.c.false_positive.is_(False), db.snapshots.c.received >= row.frozen_at - 1,
        )).scalar_one())
        suspicious = suspicious or count > 0
    drill = latest_drill(conn, pid)
    return Facts(
        practice=row.name, created=ts(row.created) or datetime.fromtimestamp(0, UTC),
        last_snapshot=ts(row.last_snapshot_at),
        last_run=RunFact(ts(run.received) or datetime.fromtimestamp(0, UTC), run.outcome, run.error_class) if run else None,
        suspicious=suspicious, suspicious_count=max(count, int(suspicious)),
        used_bytes=int(row.used_bytes or 0), quota_bytes=int(row.quota_bytes or 0),
        frozen=bool(row.frozen), frozen_reason=row.frozen_reason,
        damaged_objects=damaged_count(conn, pid),
        last_drill=DrillFact(ts(drill.time) or datetime.fromtimestamp(0, UTC), drill.outcome, drill.snapshot,
                             drill.error_class) if drill else None,
    )


def open_alerts(conn: Connection, pid: int) -> dict[str, AlertState]:
    rows = conn.execute(sa.select(t.alerts).where(t.alerts.c.practice_id == pid, t.alerts.c.is_open.is_(True))).all()
    return {r.grp: AlertState(r.id, r.grp, r.level, ts(r.opened) or datetime.fromtimestamp(0, UTC), ts(r.escalated),
                              ts(r.notified)) for r in rows}


@dataclass(frozen=True)
class PracticeState:
    name: str
    light: str
    conditions: dict[str, Condition]
    facts: Facts


@dataclass
class Evaluation:
    actions: list[tuple[str, Action]]
    states: list[PracticeState]


class Watch:
    def __init__(self, vault: Vault, config: WatchConfig) -> None:
        self.vault = vault
        self.config = config
        self.policy = policy_of(config)

    def now(self) -> datetime:
        return self.vault.clock.now()

    def state_of(self, conn: Connection, row: Any, now: datetime) -> PracticeState:
        ws = st.get(conn, row.id)
        facts = facts_of(conn, row)
        conds = conditions(facts, st.expectation(self.config, ws.overrides), now, self.policy)
        return PracticeState(row.name, status_light(conds), conds, facts)

    def states(self) -> list[PracticeState]:
        now = self.now()
        with self.vault.engine.connect() as conn:
            rows = conn.execute(sa.select(db.practices).where(db.practices.c.closed_at.is_(None))
                                .order_by(db.practices.c.name)).all()  # a closed practice expects nothing
            return [self.state_of(conn, r, now) for r in rows]

    def evaluate(self) -> Evaluation:
        """One pass over every practice: update alerts, queue notifications."""
        out = Evaluation([], [])
        with self.vault.engine.connect() as conn:
            ids = [r.id for r in conn.execute(sa.select(db.practices.c.id).where(
                db.practices.c.closed_at.is_(None)).order_by(db.practices.c.name))]
        for pid in ids:
            now = self.now()
            with self.vault.engine.begin() as conn:
                db.lock_practice(conn, pid)
                row = conn.execute(sa.select(db.practices).where(db.practices.c.id == pid)).first()
                if row is None:  # pragma: no cover - practices are not deleted
                    continue
                state = self.state_of(conn, row, now)
                actions = step(open_alerts(conn, pid), state.conditions, now, self.policy)
                for a in actions:
                    self._apply(conn, row, a, now)
                    out.actions.append((row.name, a))
                out.states.append(state)
        return out

    def _apply(self, conn: Connection, row: Any, a: Action, now: datetime) -> None:
        n = now.timestamp()
        detail = json.dumps(a.detail, sort_keys=True)[:2000]
        if a.kind == "open":
            res = conn.execute(t.alerts.insert().values(
                practice_id=row.id, grp=a.group, level=a.level, opened=n, escalated=n if a.escalate_now else None,
                resolved=None, detail=detail, is_open=True, notified=n))
            aid = int(res.inserted_primary_key[0]) if res.inserted_primary_key else 0
        else:
            aid = a.alert_id or 0
            values: dict[str, Any] = {"notified": n}
            if a.kind == "worsen":
                values.update(level=a.level, detail=detail)
                if a.escalate_now:
                    values["escalated"] = n
            elif a.kind == "escalate":
                values["escalated"] = n
            elif a.kind == "resolve":
                values.update(is_open=False, resolved=n)
            conn.execute(t.alerts.update().where(t.alerts.c.id == aid).values(**values))
        self._queue(conn, row, int(aid), a, now)

    def notice(self, conn: Connection, row: Any, kind: str, detail: dict[str, Any]) -> None:
        """A one-off notification, outside any alert, to the practice's contacts, its IT provider
        and the webhooks (``closed``: the practice was closed; rempart.vault.closing)."""
        self._queue(conn, row, 0, Action(kind, kind, kind, ("practice", "provider"), detail), self.now())

    def _queue(self, conn: Connection, row: Any, aid: int, a: Action, now: datetime) -> None:
        ws = st.get(conn, row.id)
        prov, prov_lang = st.provider_contacts(conn, ws.provider)
        payload = {"event": EVENT_OF[a.kind], "practice": row.name, "group": a.group, "level": a.level,
                   "detail": a.detail, "time": to_iso(now), "alert": aid, "provider": ws.provider,
                   "link": f"{self.config.base_url.rstrip('/')}/ui/practices/{row.name}" if self.config.base_url else ""}
        targets: list[tuple[tuple[str, ...], str]] = []
        if "practice" in a.audiences:
            if ws.contacts:
                targets.append((ws.contacts, ws.lang))
            elif "provider" not in a.audiences and prov:
                targets.append((prov, prov_lang))  # nobody at the practice to tell: the provider is told
        if "provider" in a.audiences and prov:
            targets.append((prov, prov_lang))
        if not self.config.smtp.enabled:
            targets = []  # no mail server: webhooks and the dashboard only
        for to, lang in targets:
            self.enqueue(conn, "email", json.dumps(list(to)), {**payload, "lang": lang}, aid, row.id, now)
        for hook in self.config.webhooks:
            if not hook.provider or hook.provider == ws.provider:
                self.enqueue(conn, "webhook", hook.url, {**payload, "audiences": list(a.audiences)}, aid, row.id, now)
        if not targets and not self.config.webhooks:
            log.warning("alert %s for %s: no contact configured, shown on the dashboard only", a.group, row.name)

    @staticmethod
    def enqueue(conn: Connection, channel: str, target: str, payload: dict[str, Any], aid: int | None,
                pid: int | None, now: datetime) -> None:
        conn.execute(t.outbox.insert().values(
            alert_id=aid, practice_id=pid, event=payload["event"], channel=channel, target=target,
            payload=json.dumps(payload, sort_keys=True), created=now.timestamp(), next_try=now.timestamp(),
            attempts=0, sent=None, last_error=None))

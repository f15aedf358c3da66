"""What the dashboard pages show, computed from plain metadata only (practice rows, snapshot
plain parts, alerts, audit records), filtered by the user's role: a provider admin sees every
practice, an IT provider only the practices assigned to it. Nothing here can read encrypted
content: the vault has no key."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import NotFound
from rempart.vault import db
from rempart.vault import practices as vp
from rempart.vault.dashboard.auth import User
from rempart.vault.watch import settings as st
from rempart.vault.watch import tables as t
from rempart.vault.watch.report import human_bytes
from rempart.vault.watch.schedule import zone
from rempart.vault.watch.service import WatchService


def duration(seconds: float, lang: str) -> str:
    s = int(max(0, seconds))
    d, h, m = s // 86400, (s % 86400) // 3600, (s % 3600) // 60
    dl = "j" if lang == "fr" else "d"
    if d:
        return f"{d} {dl} {h} h"
    if h:
        return f"{h} h {m} min"
    if m:
        return f"{m} min"
    return f"{s} s"


def _changed(stats: dict[str, Any]) -> int | None:
    """New + changed files of a snapshot, from the plain stats (None if the agent did not say)."""
    if "files_new" not in stats and "files_changed" not in stats:
        return None
    return int(stats.get("files_new", 0) or 0) + int(stats.get("files_changed", 0) or 0)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(v)


def findings(det: dict[str, Any]) -> str:
    """A one-line summary of the plain detection summary: finding counts, rules, canaries."""
    parts = [f"{k}: {v}" for k, v in sorted((det.get("counts") or {}).items()) if _num(v)]
    parts += [f"{k}: {v}" for k, v in sorted(det.items())
              if k not in ("verdict", "score", "v", "changed", "deleted", "clean_point") and _num(v)]
    rules = det.get("rules")
    if isinstance(rules, list) and rules:
        parts.append("rules: " + " ".join(str(r)[:40] for r in rules[:8]))
    can = det.get("canaries")
    if isinstance(can, dict) and _num(can.get("tripped")):
        parts.append(f"canaries tripped: {can['tripped']}")
    return ", ".join(parts)


class Views:
    def __init__(self, service: WatchService) -> None:
        self.service = service
        self.vault = service.vault
        self.tz = zone(service.config.timezone)

    def fmt_time(self, x: float | None) -> str:
        if x is None:
            return ""
        return datetime.fromtimestamp(x, UTC).astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def visible(self, conn: Connection, user: User) -> list[Any]:
        q = sa.select(db.practices).where(db.practices.c.closed_at.is_(None)).order_by(db.practices.c.name)
        if not user.is_admin:
            q = q.select_from(db.practices.join(t.settings, t.settings.c.practice_id == db.practices.c.id)) \
                 .where(t.settings.c.provider == user.provider)
        return list(conn.execute(q).all())

    def practice_row(self, conn: Connection, user: User, name: str) -> Any:
        """The practice if this user may see it; NotFound otherwise (no hint that it exists)."""
        for r in self.visible(conn, user):
            if r.name == name:
                return r
        raise NotFound("no such practice")

    def _last_clean(self, conn: Connection, pid: int) -> Any:
        return conn.execute(sa.select(db.snapshots.c.received, db.snapshots.c.stats).where(
            db.snapshots.c.practice_id == pid, db.snapshots.c.state == "kept",
            sa.or_(db.snapshots.c.verdict == "clean", db.snapshots.c.false_positive.is_(True)),
        ).order_by(db.snapshots.c.received.desc()).limit(1)).first()

    def summary(self, conn: Connection, row: Any, lang: str) -> dict[str, Any]:
        now = self.vault.now()
        state = self.service.watch.state_of(conn, row, self.vault.clock.now())
        clean = self._last_clean(conn, row.id)
        stats = json.loads(clean.stats or "{}") if clean else {}
        latest = conn.execute(sa.select(db.snapshots.c.verdict, db.snapshots.c.false_positive).where(
            db.snapshots.c.practice_id == row.id, db.snapshots.c.state == "kept"
        ).order_by(db.snapshots.c.received.desc()).limit(1)).first()
        detection = "frozen" if row.frozen else (
            "none" if latest is None else "clean" if latest.verdict == "clean" or latest.false_positive
            else "suspicious")
        return {
            "name": row.name, "light": state.light, "levels": sorted(c.level for c in state.conditions.values()),
            "last_good": self.fmt_time(clean.received) if clean else None,
            "last_good_ago": duration(now - clean.received, lang) if clean else None,
            "protected": human_bytes(int(stats.get("bytes", 0) or 0), lang) if clean else None,
            "protected_files": int(stats.get("files", 0) or 0) if clean else None,
            "used": human_bytes(int(row.used_bytes or 0), lang),
            "quota": human_bytes(int(row.quota_bytes), lang) if row.quota_bytes else None,
            "detection": detection, "frozen": bool(row.frozen), "frozen_reason": row.frozen_reason,
            "last_run": {"time": state.facts.last_run.received.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"),
                         "outcome": state.facts.last_run.outcome, "error": state.facts.last_run.error_class or ""}
            if state.facts.last_run else None,
            "last_drill": {"time": state.facts.last_drill.time.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"),
                           "outcome": state.facts.last_drill.outcome, "error": state.facts.last_drill.error_class or ""}
            if state.facts.last_drill else None,
        }

    def practices(self, user: User, lang: str) -> list[dict[str, Any]]:
        with self.vault.engine.connect() as conn:
            return [self.summary(conn, r, lang) for r in self.visible(conn, user)]

    def practice(self, user: User, name: str, lang: str) -> dict[str, Any]:
        with self.vault.engine.connect() as conn:
            row = self.practice_row(conn, user, name)
            out = self.summary(conn, row, lang)
            ws = st.get(conn, row.id)
            out["provider"] = ws.provider
            out["expectation"] = st.expectation(self.service.config, ws.overrides).describe(lang)
            alerts = conn.execute(sa.select(t.alerts).where(t.alerts.c.practice_id == row.id)
                                  .order_by(t.alerts.c.id.desc()).limit(100)).all()
        out["alerts"] = [{"opened": self.fmt_time(a.opened), "level": a.level,
                          "escalated": self.fmt_time(a.escalated), "resolved": self.fmt_time(a.resolved),
                          "open": bool(a.is_open)} for a in alerts]
        snaps = vp.timeline(self.vault, self.vault.practice(name), limit=200)
        out["timeline"] = [{
            "received": self.fmt_time(s["received"]), "verdict": s["verdict"], "false_positive": s["false_positive"],
            "name": s["name"][:12], "state": s["state"], "held": s["hold"] is not None,
            "files": s["stats"].get("files"), "size": human_bytes(int(s["stats"].get("bytes", 0) or 0), lang),
            "changed": _changed(s["stats"]),
            "findings": findings(s["detection"]),
        } for s in snaps]
        return out

    def audit(self, user: User, before: int | None, limit: int = 200) -> list[dict[str, Any]]:
        with self.vault.engine.connect() as conn:
            q = sa.select(db.audit).order_by(db.audit.c.seq.desc()).limit(limit)
            if before:
                q = q.where(db.audit.c.seq < before)
            if not user.is_admin:
                names = [r.name for r in self.visible(conn, user)]
                q = q.where(sa.or_(db.audit.c.practice.in_(names), db.audit.c.actor == user.actor))
            rows = conn.execute(q).all()
        return [{"seq": r.seq, "time": self.fmt_time(r.time), "actor": r.actor, "action": r.action,
                 "practice": r.practice or "", "outcome": r.outcome, "detail": (r.detail or "")[:300]} for r in rows]

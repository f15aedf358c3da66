"""The weekly report to each practice: backups made, data protected, storage, last restore
drill and anything that needs attention; French by default, English on request.

Reports are built from plain metadata only (snapshot counts, sizes from the plain stats, alerts,
drills); they are queued in the outbox like alerts and sent by the dispatcher."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.clock import to_iso
from rempart.vault import db
from rempart.vault.service import Vault
from rempart.vault.watch import settings as st
from rempart.vault.watch import tables as t
from rempart.vault.watch.config import DAYS, WatchConfig
from rempart.vault.watch.drills import DRILL_MAX_AGE_DAYS, latest_drill
from rempart.vault.watch.engine import Watch
from rempart.vault.watch.messages import LEVEL, lang_of
from rempart.vault.watch.schedule import zone


def human_bytes(n: float, lang: str = "fr") -> str:
    units = ["o", "Ko", "Mo", "Go", "To"] if lang == "fr" else ["B", "KB", "MB", "GB", "TB"]
    x = float(n)
    for u in units:
        if x < 1000 or u == units[-1]:
            s = f"{x:.0f}" if u == units[0] else f"{x:.1f}"
            return f"{s.replace('.', ',') if lang == 'fr' else s} {u}"
        x /= 1000
    return f"{n}"  # pragma: no cover


def report_data(conn: Connection, row: Any, now: datetime, days: int = 7) -> dict[str, Any]:
    since = (now - timedelta(days=days)).timestamp()
    pid = row.id
    snaps = conn.execute(sa.select(db.snapshots.c.verdict, db.snapshots.c.false_positive).where(
        db.snapshots.c.practice_id == pid, db.snapshots.c.received >= since)).all()
    runs_failed = conn.execute(sa.select(sa.func.count()).select_from(db.runs).where(
        db.runs.c.practice_id == pid, db.runs.c.received >= since, db.runs.c.outcome != "ok")).scalar_one()
    last_clean = conn.execute(sa.select(db.snapshots.c.received, db.snapshots.c.stats).where(
        db.snapshots.c.practice_id == pid, db.snapshots.c.state == "kept",
        sa.or_(db.snapshots.c.verdict == "clean", db.snapshots.c.false_positive.is_(True)),
    ).order_by(db.snapshots.c.received.desc()).limit(1)).first()
    stats = json.loads(last_clean.stats or "{}") if last_clean else {}
    drill = latest_drill(conn, pid)
    alerts = conn.execute(sa.select(t.alerts.c.level).where(t.alerts.c.practice_id == pid,
                                                            t.alerts.c.is_open.is_(True))).all()
    attention = sorted({a.level for a in alerts})
    stale = drill is None or drill.time < now.timestamp() - DRILL_MAX_AGE_DAYS * 86400 or drill.outcome != "ok"
    if stale and "drill" not in attention:  # (a failed drill has its own open alert too)
        attention.append("drill")
    return {
        "event": "report", "practice": row.name, "time": to_iso(now), "days": days,
        "backups": len(snaps), "suspicious": sum(1 for s in snaps if s.verdict == "suspicious" and not s.false_positive),
        "failed_runs": int(runs_failed),
        "protected_bytes": int(stats.get("bytes", 0) or 0), "protected_files": int(stats.get("files", 0) or 0),
        "last_clean": to_iso(datetime.fromtimestamp(last_clean.received, now.tzinfo)) if last_clean else None,
        "used_bytes": int(row.used_bytes or 0), "quota_bytes": int(row.quota_bytes or 0),
        "drill": {"time": to_iso(datetime.fromtimestamp(drill.time, now.tzinfo)), "outcome": drill.outcome,
                  "bytes": drill.bytes, "seconds": drill.seconds} if drill else None,
        "attention": attention, "frozen": bool(row.frozen),
    }


T = {
    "fr": {"subject": "[Rempart] Rapport hebdomadaire {p}", "title": "Rapport des {d} derniers jours, cabinet {p}",
           "backups": "Sauvegardes reçues", "suspicious": "dont suspectes", "failed": "Échecs signalés par l'agent",
           "protected": "Données protégées (dernière sauvegarde saine)", "files": "fichiers",
           "last_clean": "Dernière sauvegarde saine", "never": "aucune",
           "storage": "Stockage utilisé", "of": "sur", "unlimited": "sans limite",
           "drill": "Dernier exercice de restauration", "drill_none": "jamais fait : prévoyez-en un",
           "attention": "À traiter", "nothing": "Rien à signaler.",
           "drill_item": "faire un exercice de restauration (le dernier date de plus de 90 jours ou a échoué)",
           "ok": "réussi", "failed_drill": "échoué", "location": "Lieu d'hébergement des données",
           "copy": "copie"},
    "en": {"subject": "[Rempart] Weekly report {p}", "title": "Report for the last {d} days, practice {p}",
           "backups": "Backups received", "suspicious": "of which suspicious", "failed": "Failures reported by the agent",
           "protected": "Data protected (latest clean backup)", "files": "files",
           "last_clean": "Latest clean backup", "never": "none",
           "storage": "Storage used", "of": "of", "unlimited": "no limit",
           "drill": "Latest restore drill", "drill_none": "never done: plan one",
           "attention": "Needs attention", "nothing": "Nothing to report.",
           "drill_item": "run a restore drill (the last one is older than 90 days or failed)",
           "ok": "passed", "failed_drill": "failed", "location": "Where the data is hosted", "copy": "copy"},
}


def render_report(d: dict[str, Any], lang: str) -> tuple[str, str]:
    lang = lang_of(lang)
    w = T[lang]
    quota = human_bytes(d["quota_bytes"], lang) if d["quota_bytes"] else w["unlimited"]
    drill = d.get("drill")
    lines = [
        w["title"].format(d=d["days"], p=d["practice"]), "",
        f"{w['backups']}: {d['backups']} ({w['suspicious']}: {d['suspicious']})",
        f"{w['failed']}: {d['failed_runs']}",
        f"{w['protected']}: {human_bytes(d['protected_bytes'], lang)}, {d['protected_files']} {w['files']}",
        f"{w['last_clean']}: {d['last_clean'] or w['never']}",
        f"{w['storage']}: {human_bytes(d['used_bytes'], lang)} {w['of']} {quota}",
        f"{w['drill']}: " + (f"{drill['time']} ({w['ok'] if drill['outcome'] == 'ok' else w['failed_drill']}"
                             + _measured(drill, lang) + ")" if drill else w["drill_none"]),
    ]
    loc = d.get("location") or {}
    if loc.get("vault"):
        lines.append(f"{w['location']}: {loc['vault']}" + (f" ({w['copy']}: {loc['replica']})" if loc.get("replica") else ""))
    lines += ["", f"{w['attention']}:"]
    items = [w["drill_item"] if a == "drill" else LEVEL[lang].get(a, a) for a in d["attention"]]
    lines += [f"  - {i}" for i in items] or [f"  {w['nothing']}"]
    lines += ["", "-- ", "Rempart"]
    return w["subject"].format(p=d["practice"]), "\n".join(lines) + "\n"


def _measured(drill: dict[str, Any], lang: str) -> str:
    """", 51.0 MB read back in 12 s" for a drill that measured it (`rempart drill`)."""
    if drill.get("outcome") != "ok" or drill.get("bytes") is None or drill.get("seconds") is None:
        return ""
    what = "relus en" if lang == "fr" else "read back in"
    return f", {human_bytes(drill['bytes'], lang)} {what} {drill['seconds']:.0f} s"


def queue_report(watch: Watch, conn: Connection, row: Any, now: datetime, *, lang: str | None = None) -> bool:
    """Queue one report for a practice; False if nobody can receive it."""
    ws = st.get(conn, row.id)
    to, to_lang = (ws.contacts, ws.lang) if ws.contacts else st.provider_contacts(conn, ws.provider)
    if not to:
        return False
    payload = {**report_data(conn, row, now), "lang": lang or to_lang, "location": watch.vault.config.data_location()}
    watch.enqueue(conn, "email", json.dumps(list(to)), payload, None, row.id, now)
    return True


def due_reports(vault: Vault, config: WatchConfig, watch: Watch) -> int:
    """Queue this week's report for every practice that has not had it yet (on the report day)."""
    if config.report_weekday not in DAYS:
        return 0
    now = vault.clock.now()
    local = now.astimezone(zone(config.timezone))
    if local.weekday() != DAYS.index(config.report_weekday) or local.hour < config.report_hour:
        return 0
    year, week, _ = local.isocalendar()
    period = f"{year}-W{week:02d}"
    n = 0
    with vault.engine.begin() as conn:
        rows = conn.execute(sa.select(db.practices).where(db.practices.c.closed_at.is_(None))).all()
        done = {r[0] for r in conn.execute(sa.select(t.reports.c.practice_id).where(t.reports.c.period == period))}
        for row in rows:
            if row.id in done or not st.get(conn, row.id).reports:
                continue
            if queue_report(watch, conn, row, now):
                n += 1
            conn.execute(t.reports.insert().values(practice_id=row.id, period=period, queued=now.timestamp()))
    return n

"""The alert engine inside a real vault (database, storage, service) with a fake clock, sending
through a real SMTP server: late -> escalated -> missing -> resolved, deduplication, failed
runs, suspicious snapshots, quota, retries when SMTP is down, weekly reports, metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient
from watch_helpers import Env, Hook, SmtpServer, backup, make_env, start_smtp

from rempart.testing.servers import free_ports
from rempart.vault import db
from rempart.vault import practices as vp
from rempart.vault.watch import tables as t
from rempart.vault.watch.channels import verify_signature


def subjects(smtp: SmtpServer) -> list[tuple[str, str]]:
    return [(m["X-Test-Rcpt"], m["Subject"]) for m in smtp.messages]


def test_late_escalate_missing_resolved_by_mail(env: Env, smtp: SmtpServer) -> None:
    env.add("cabinet-a")
    env.provider("infogarde", ["support@infogarde.test"], lang="en")
    backup(env.vault, "cabinet-a")
    assert env.watch.tick().evaluation.actions == []
    env.clock.advance(3600 + 600)  # due + grace: late
    r = env.watch.tick()
    assert [(a.kind, a.level) for _, a in r.evaluation.actions] == [("open", "late")]
    assert r.dispatch.sent == 1
    (m,) = smtp.wait_for(lambda m: True)
    assert m["X-Test-Rcpt"] == "dr@cabinet.test"
    assert m["Subject"] == "[Rempart] ALERTE cabinet-a: sauvegarde en retard"
    assert "https://vault.test:8443/ui/practices/cabinet-a" in m.get_content()
    for _ in range(3):  # deduplicated
        env.clock.advance(300)
        assert env.watch.tick().dispatch.sent == 0
    env.clock.advance(2 * 3600)  # open for > escalate_after: the IT provider is told, in its language
    env.watch.tick()
    esc = smtp.wait_for(lambda m: m["X-Test-Rcpt"] == "support@infogarde.test")
    assert esc[0]["Subject"] == "[Rempart] ESCALATED cabinet-a: backup late"
    env.clock.advance(3600)  # due + missing_after: worse, both told
    env.watch.tick()
    smtp.wait_for(lambda m: "manquante" in m["Subject"])
    smtp.wait_for(lambda m: "backup missing" in m["Subject"])
    backup(env.vault, "cabinet-a")
    env.watch.tick()
    smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RÉSOLU cabinet-a"))
    smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RESOLVED cabinet-a"))
    assert len(smtp.messages) == 6, subjects(smtp)
    assert all(m["X-Test-TLS"] == "yes" and m["X-Test-Auth"] == "yes" for m in smtp.messages)
    with env.vault.engine.connect() as conn:
        rows = conn.execute(sa.select(t.alerts)).all()
    assert len(rows) == 1 and not rows[0].is_open and rows[0].level == "missing" and rows[0].escalated


def test_failed_run_suspicious_and_quota(env: Env, smtp: SmtpServer) -> None:
    env.add("cabinet-b")
    env.provider("infogarde", ["support@infogarde.test"])
    backup(env.vault, "cabinet-b")
    env.clock.advance(60)
    vp.report_run(env.vault, env.vault.practice("cabinet-b"), "failed", "SourceError", {}, actor="test")
    env.watch.tick()
    smtp.wait_for(lambda m: "en échec" in m["Subject"])
    backup(env.vault, "cabinet-b", verdict="suspicious", findings={"became_random": 40})
    used = env.vault.practice("cabinet-b").used_bytes
    vp.set_quota(env.vault, "cabinet-b", int(used / 0.95), actor="test")  # 95 % full
    ev = env.watch.tick().evaluation
    kinds = sorted((a.kind, a.group) for _, a in ev.actions)
    assert ("resolve", "failed") in kinds and ("open", "suspicious") in kinds and ("open", "frozen") in kinds
    assert ("open", "quota") in kinds
    sus = smtp.wait_for(lambda m: "suspecte" in m["Subject"])
    assert {m["X-Test-Rcpt"] for m in sus} == {"dr@cabinet.test", "support@infogarde.test"}  # urgent: both at once
    assert env.watch.watch.states()[0].light == "red"


def test_mail_retried_when_smtp_is_down(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    smtp = start_smtp(tmp_path, port)
    env = make_env(tmp_path, smtp)
    smtp.stop()  # the mail server is down when the alert fires
    env.add("cabinet-c")
    env.clock.advance(2 * 3600)
    r = env.watch.tick()
    assert r.dispatch.sent == 0 and r.dispatch.failed == 1
    with env.vault.engine.connect() as conn:
        row = conn.execute(sa.select(t.outbox)).one()
    assert row.sent is None and row.attempts == 1 and "cannot send mail" in row.last_error
    assert smtp.password not in row.last_error
    smtp = start_smtp(tmp_path, port)  # back up (same port, same CA file path)
    try:
        assert env.watch.tick().dispatch.sent == 0  # not before its retry time
        env.clock.advance(61)
        assert env.watch.tick().dispatch.sent == 1
        smtp.wait_for(lambda m: "retard" in m["Subject"])
    finally:
        smtp.stop()


def test_weekly_report_french_and_english(tmp_path: Path, smtp: SmtpServer) -> None:
    env = make_env(tmp_path, smtp, report_weekday="mon", report_hour=11)
    env.add("cabinet-fr")
    env.add("cabinet-en", contacts=("doc@practice.test",), lang="en")
    for _ in range(3):
        backup(env.vault, "cabinet-fr", nbytes=2_500_000_000, files=1234)
        backup(env.vault, "cabinet-en")
    cfg = env.vault.config  # where the data is hosted, as the provider configured it, is told (HDS)
    env.vault.config = dataclasses.replace(
        cfg, storage=dataclasses.replace(cfg.storage, location="France, OVHcloud Roubaix (HDS)"),
        replica=dataclasses.replace(cfg.storage, path=tmp_path / "b", location="France, Strasbourg (HDS)"))
    assert vp.status(env.vault, env.vault.practice("cabinet-en"))["data_location"] == {
        "vault": "France, OVHcloud Roubaix (HDS)", "replica": "France, Strasbourg (HDS)"}
    assert env.watch.tick().reports == 0  # 10:00 Paris, reports at 11:00
    env.clock.advance(3600)
    assert env.watch.tick().reports == 2
    fr = smtp.wait_for(lambda m: m["Subject"] == "[Rempart] Rapport hebdomadaire cabinet-fr")[0].get_content()
    assert "Sauvegardes reçues: 3 (dont suspectes: 0)" in fr
    assert "Données protégées (dernière sauvegarde saine): 2,5 Go, 1234 fichiers" in fr
    assert "jamais fait" in fr  # no restore drill recorded
    assert "Lieu d'hébergement des données: France, OVHcloud Roubaix (HDS) (copie: France, Strasbourg (HDS))" in fr
    en = smtp.wait_for(lambda m: m["Subject"] == "[Rempart] Weekly report cabinet-en")[0].get_content()
    assert "Backups received: 3" in en and "Latest restore drill: never done" in en
    assert "Where the data is hosted: France, OVHcloud Roubaix (HDS) (copy: France, Strasbourg (HDS))" in en
    env.clock.advance(600)
    assert env.watch.tick().reports == 0  # once a week


def test_weekly_report_shows_a_measured_drill_and_a_failed_one_needs_attention(tmp_path: Path,
                                                                              smtp: SmtpServer) -> None:
    from rempart.vault.watch.drills import DrillRecord, record_drill
    from rempart.vault.watch.report import render_report, report_data

    env = make_env(tmp_path, smtp)
    env.add("cabinet-d", contacts=("doc@practice.test",), lang="en")
    backup(env.vault, "cabinet-d")
    p = env.vault.practice("cabinet-d")
    record_drill(env.vault, p, DrillRecord("ok", snapshot="ab" * 32, files=12, bytes=51_000_000, seconds=12.4),
                 actor="test")

    def report(lang: str) -> str:
        with env.vault.engine.connect() as conn:
            row = conn.execute(sa.select(db.practices).where(db.practices.c.name == "cabinet-d")).one()
            return render_report(report_data(conn, row, env.clock.now()), lang)[1]

    assert "(passed, 51.0 MB read back in 12 s)" in report("en")
    assert "(réussi, 51,0 Mo relus en 12 s)" in report("fr")
    assert "run a restore drill" not in report("en")
    env.clock.advance(60)
    record_drill(env.vault, p, DrillRecord("failed", snapshot="ab" * 32, error_class="IntegrityError"), actor="test")
    env.watch.tick()  # opens the drill alert: listed once among the items needing attention
    en = report("en")
    assert "Latest restore drill: " in en and "(failed)" in en
    assert en.count("run a restore drill") == 1


def test_metrics_expose_open_alerts_and_status(env: Env) -> None:
    env.add("cabinet-m")
    backup(env.vault, "cabinet-m")
    env.clock.advance(2 * 3600)
    env.watch.tick()
    body = TestClient(env.app).get("/metrics").text
    assert 'rempart_vault_alerts_open{level="late",practice="cabinet-m"} 1.0' in body
    assert 'rempart_vault_practice_status{practice="cabinet-m"} 1.0' in body
    assert 'rempart_vault_practice_last_backup_age_seconds{practice="cabinet-m"} 7200.0' in body
    assert 'rempart_vault_practice_bytes_stored{practice="cabinet-m"}' in body


def test_webhooks_signed_per_provider(tmp_path: Path) -> None:
    ours, theirs = Hook([500]), Hook([])
    try:
        env = make_env(tmp_path, None, webhooks=[
            {"url": ours.url, "secret": "our-hook-secret", "provider": "infogarde", "backoff_seconds": 0.01},
            {"url": theirs.url, "secret": "their-secret", "provider": "autreprest"}])
        env.add("cabinet-w", provider="infogarde")
        backup(env.vault, "cabinet-w")
        env.clock.advance(3600 + 600)
        r = env.watch.tick()
        assert r.dispatch.sent == 1 and r.dispatch.failed == 0
        assert len(ours.received) == 2 and theirs.received == []  # one 500 retried, then delivered
        headers, body = ours.received[-1]
        payload = json.loads(body)
        assert payload["event"] == "opened" and payload["practice"] == "cabinet-w" and payload["level"] == "late"
        assert payload["audiences"] == ["practice"]
        assert verify_signature("our-hook-secret", headers["x-rempart-timestamp"], body,
                                headers["x-rempart-signature"], now=env.vault.now())
        backup(env.vault, "cabinet-w")
        env.watch.tick()
        assert json.loads(ours.received[-1][1])["event"] == "resolved"
    finally:
        ours.close()
        theirs.close()


def test_daily_reminder_by_mail(env: Env, smtp: SmtpServer) -> None:
    env.add("cabinet-r")
    backup(env.vault, "cabinet-r")
    env.clock.advance(4 * 3600)  # missing at once (open at level missing)
    env.watch.tick()
    smtp.wait_for(lambda m: "ALERTE cabinet-r: sauvegarde manquante" in m["Subject"])
    env.clock.advance(3 * 3600)
    assert [a.kind for _, a in env.watch.tick().evaluation.actions] == ["escalate"]
    env.clock.advance(86400)
    env.watch.tick()
    (m,) = smtp.wait_for(lambda m: m["Subject"].startswith("[Rempart] RAPPEL cabinet-r"))
    assert "toujours ouverte" in m.get_content()


def test_migrations_add_the_reminder_drill_and_totp_columns_to_an_old_schema(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = sa.MetaData()
    sa.Table("watch_alerts", old, sa.Column("id", sa.Integer, primary_key=True), sa.Column("grp", sa.String(16)))
    sa.Table("watch_drills", old, sa.Column("id", sa.Integer, primary_key=True), sa.Column("practice_id", sa.Integer),
             sa.Column("time", sa.Float), sa.Column("outcome", sa.String(16)), sa.Column("note", sa.String(200)))
    sa.Table("watch_users", old, sa.Column("username", sa.String(64), primary_key=True),
             sa.Column("pw_hash", sa.String(200)), sa.Column("role", sa.String(16)))
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(sa.text("INSERT INTO watch_drills (practice_id, time, outcome, note) VALUES (1, 5.0, 'ok', 'x')"))
        conn.execute(sa.text("INSERT INTO watch_users VALUES ('alice', 'scrypt$x', 'admin')"))
        t.version.create(conn)
        conn.execute(t.version.insert().values(version=1))
    assert t.migrate(engine) == 4
    cols = {c["name"] for c in sa.inspect(engine).get_columns("watch_users")}
    assert {"totp_secret", "totp_last_step"} <= cols  # migration 4: one-time codes
    cols = {c["name"] for c in sa.inspect(engine).get_columns("watch_alerts")}
    assert "notified" in cols
    cols = {c["name"] for c in sa.inspect(engine).get_columns("watch_drills")}
    assert {"snapshot", "files", "bytes", "seconds", "error_class"} <= cols
    with engine.connect() as conn:  # the drill recorded before is still there, with empty new fields
        row = conn.execute(sa.select(t.drills)).one()
    assert (row.outcome, row.note, row.snapshot, row.files) == ("ok", "x", None, None)
    assert t.migrate(engine) == 4  # idempotent


def test_closing_a_practice_tells_the_practice_and_its_provider_then_the_watch_goes_quiet(
        env: Env, smtp: SmtpServer) -> None:
    from rempart.vault import closing

    env.add("cabinet-a")
    env.provider("infogarde", ["support@infogarde.test"], lang="en")
    backup(env.vault, "cabinet-a")
    closing.close(env.vault, "cabinet-a", "contract ended", actor="token:admin")
    assert env.watch.tick().dispatch.sent == 2
    fr = smtp.wait_for(lambda m: m["X-Test-Rcpt"] == "dr@cabinet.test")[0]
    en = smtp.wait_for(lambda m: m["X-Test-Rcpt"] == "support@infogarde.test")[0]
    assert fr["Subject"] == "[Rempart] CLÔTURE cabinet-a: cabinet clôturé"
    assert en["Subject"] == "[Rempart] CLOSED cabinet-a: practice closed"
    assert "Erased from (UTC): 2026-" in en.get_content() and "call the vault's provider at once" in en.get_content()
    env.clock.advance(40 * 86400)  # long silent: a closed practice raises no alert
    assert env.watch.tick().evaluation.actions == [] and len(smtp.messages) == 2

"""The watch tables, engine and dashboard sessions on a real PostgreSQL server (Debian binaries,
started by the shared fixture): the same code as on SQLite."""

from __future__ import annotations

import secrets
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient
from watch_helpers import SmtpServer, backup, make_env

from rempart.vault.dashboard import auth


def fresh_database(dsn: str) -> str:
    name = f"watch_{secrets.token_hex(4)}"
    admin = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base = dsn.replace("postgresql://", "postgresql+psycopg://")
    return base.rsplit("/", 1)[0] + f"/{name}"


def test_alerts_and_dashboard_on_postgresql(tmp_path: Path, smtp: SmtpServer, postgres_dsn: str) -> None:
    env = make_env(tmp_path, smtp, database_url=fresh_database(postgres_dsn))
    assert env.vault.engine.dialect.name == "postgresql"
    env.add("cabinet-pg")
    backup(env.vault, "cabinet-pg")
    env.clock.advance(3600 + 600)
    assert [a.level for _, a in env.watch.tick().evaluation.actions] == ["late"]
    assert env.watch.tick().evaluation.actions == []  # deduplicated
    smtp.wait_for(lambda m: "retard" in m["Subject"])
    backup(env.vault, "cabinet-pg")
    assert [a.kind for _, a in env.watch.tick().evaluation.actions] == ["resolve"]
    smtp.wait_for(lambda m: "RÉSOLU" in m["Subject"])
    with env.vault.engine.begin() as conn:
        auth.add_user(conn, "admin", "a long password here", "admin", None, "fr", env.vault.now())
    c = TestClient(env.app)
    import re

    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)  # type: ignore[union-attr]
    r = c.post("/ui/login", data={"username": "admin", "password": "a long password here", "csrf": token},
               follow_redirects=False)
    assert r.status_code == 303
    page = c.get("/ui/practices/cabinet-pg").text
    assert "cabinet-pg" in page and 'id="timeline"' in page

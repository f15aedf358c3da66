"""Agent configuration: parsed once, validated with clear messages, REMPART_* overrides."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from rempart.agent.config import load_config, parse_config
from rempart.core.errors import ConfigError

FULL = """
[repository]
url = "https://127.0.0.1:8443/cabinet"
ca_file = "ca.pem"
token_file = "vault-token"

[backup]
paths = ["docs"]
excludes = ["*.tmp"]

[schedule]
interval_minutes = 30
opening_hours = "08:00-19:00"
days = ["mon", "wed", "Friday"]
daily_at = "22:15"
timezone = "Europe/Paris"

[limits]
upload_kbps = 500
nice = 5

[[sources]]
kind = "sqlite"
name = "agenda"
path = "agenda.db"

[[sources]]
kind = "postgres"
name = "patients"
dsn = "postgresql://u@127.0.0.1:5432/db"
password_file = "pg.pw"

[[hooks]]
name = "pause"
pre = ["true"]
timeout_seconds = 5
"""


def test_full_config_parses_with_relative_paths(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(FULL)
    c = load_config(p, {})
    assert c.repository.ca_file == tmp_path / "ca.pem"
    assert c.repository.token_file == tmp_path / "vault-token"
    assert c.backup.paths == (tmp_path / "docs",)
    assert c.schedule.interval_minutes == 30
    assert (c.schedule.opening_start, c.schedule.opening_end) == (time(8), time(19))
    assert c.schedule.days == frozenset({0, 2, 4})
    assert c.schedule.daily_at == time(22, 15)
    assert c.limits.upload_kbps == 500 and c.limits.nice == 5
    assert [s.name for s in c.sources] == ["agenda", "patients"]
    assert c.sources[0].path == tmp_path / "agenda.db"
    assert c.hooks[0].pre == ("true",)
    with pytest.raises(AttributeError):
        c.limits.nice = 1  # type: ignore[misc]  # frozen


def test_env_overrides(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(FULL)
    c = load_config(p, {"REMPART_UPLOAD_KBPS": "42", "REMPART_INTERVAL_MINUTES": "0.5", "REMPART_NICE": "19",
                        "REMPART_REPOSITORY": "/elsewhere"})
    assert c.limits.upload_kbps == 42 and c.schedule.interval_minutes == 0.5 and c.limits.nice == 19
    assert c.repository.url == "/elsewhere"
    with pytest.raises(ConfigError, match="REMPART_NICE"):
        load_config(p, {"REMPART_NICE": "lots"})


@pytest.mark.parametrize("raw, message", [
    ({}, "url is required"),
    ({"repository": {"url": "https://h:1/p"}}, "needs token_file"),
    ({"repository": {"url": "/r", "tokn": "x"}}, "unknown key"),
    ({"repository": {"url": "/r"}, "schedule": {"opening_hours": "20:00-07:00"}}, "end after they start"),
    ({"repository": {"url": "/r"}, "schedule": {"days": ["mon", "funday"]}}, "unknown day"),
    ({"repository": {"url": "/r"}, "schedule": {"daily_at": "25:99"}}, "21:30"),
    ({"repository": {"url": "/r"}, "schedule": {"days": [], "daily_at": "off"}}, "no backup ever runs"),
    ({"repository": {"url": "/r"}, "schedule": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
    ({"repository": {"url": "/r"}, "limits": {"nice": 40}}, "between 0 and 19"),
    ({"repository": {"url": "/r"}, "limits": {"upload_kbps": "fast"}}, "must be a number"),
    ({"repository": {"url": "/r"}, "sources": [{"kind": "oracle", "name": "x"}]}, "kind must be one of"),
    ({"repository": {"url": "/r"}, "sources": [{"kind": "sqlite", "name": "a/b", "path": "x"}]}, "name must be"),
    ({"repository": {"url": "/r"}, "sources": [{"kind": "postgres", "name": "a"}]}, "needs dsn"),
    ({"repository": {"url": "/r"}, "sources": [{"kind": "sqlite", "name": "a", "path": "x", "dsn": "y"}]},
     "unknown key"),
    ({"repository": {"url": "/r"}, "hooks": [{"name": "h"}]}, "needs a pre or post"),
    ({"repository": {"url": "/r"}, "sources": [{"kind": "sqlite", "name": "a", "path": "x"}],
      "hooks": [{"name": "a", "pre": ["true"]}]}, "distinct name"),
])
def test_bad_config_is_refused_clearly(raw: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, {}, base=tmp_path)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(tmp_path / "nope.toml", {})
    assert "rempart enroll" in (e.value.hint or "")
    bad = tmp_path / "bad.toml"
    bad.write_text("[repository\nurl=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})


def test_source_repr_hides_the_dsn(tmp_path: Path) -> None:
    c = parse_config({"repository": {"url": "/r"}, "sources": [
        {"kind": "postgres", "name": "p", "dsn": "postgresql://u:SECRETPW@h/db"}]}, {}, base=tmp_path)
    assert "SECRETPW" not in repr(c)

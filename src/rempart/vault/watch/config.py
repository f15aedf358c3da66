"""Configuration of the watch (alerts, channels, reports) and the dashboard: the ``[watch]``,
``[watch.smtp]``, ``[[watch.webhooks]]`` and ``[dashboard]`` sections of the vault's TOML file.

Example::

    [watch]
    interval_seconds = 60           # how often the vault evaluates expectations
    every_seconds = 3600            # default expectation: one snapshot an hour ...
    open_hours = "08:00-19:00"      # ... during opening hours ("" = always open)
    open_days = "mon-sat"
    timezone = "Europe/Paris"
    max_gap_seconds = 86400         # and at least one a day whatever the hours
    grace_seconds = 900             # late after due + grace
    missing_after_seconds = 14400   # missing after due + this
    escalate_after_seconds = 14400  # practice contact first, IT provider after this
    remind_after_seconds = 86400    # remind everyone told while an alert stays open (0 = never)
    urgent_kinds = ["suspicious", "damage"]  # kinds that reach the IT provider at once
    quota_warn_ratio = 0.9
    report_weekday = "mon"          # weekly report day (vault timezone above), 0 = off
    report_hour = 7
    base_url = "https://vault.example:8443"  # link in e-mails

    [watch.smtp]
    host = "smtp.example"  port = 587  starttls = true  username = "..."  password = "..."
    sender = "Rempart <alerts@example>"  ca_file = ""   timeout_seconds = 20

    [[watch.webhooks]]
    url = "https://ops.example/hook"  secret = "..."  provider = ""   # "" = every practice

    [dashboard]
    enabled = true
    session_hours = 12
    login_failures = 5              # per address and per user name within login_window_seconds
    login_window_seconds = 900
    provider_can_release = false    # IT providers may freeze; releasing needs an admin by default
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rempart.core.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KINDS = ("late", "missing", "failed", "suspicious", "quota", "frozen", "drill", "damage")


@dataclass(frozen=True)
class SmtpConfig:
    host: str = ""
    port: int = 587
    starttls: bool = True
    ssl: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    sender: str = "rempart@localhost"
    ca_file: str = ""
    timeout_seconds: float = 20.0

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str = field(default="", repr=False)
    provider: str = ""
    attempts: int = 4
    backoff_seconds: float = 1.0
    timeout_seconds: float = 10.0
    ca_file: str = ""


@dataclass(frozen=True)
class WatchConfig:
    enabled: bool = True
    interval_seconds: float = 60.0
    every_seconds: float = 3600.0
    open_hours: str = "08:00-19:00"
    open_days: str = "mon-sat"
    timezone: str = "Europe/Paris"
    max_gap_seconds: float = 86400.0
    grace_seconds: float = 900.0
    missing_after_seconds: float = 14400.0
    escalate_after_seconds: float = 14400.0
    remind_after_seconds: float = 86400.0
    urgent_kinds: tuple[str, ...] = ("suspicious", "damage")
    quota_warn_ratio: float = 0.9
    report_weekday: str = "mon"
    report_hour: int = 7
    base_url: str = ""
    smtp: SmtpConfig = SmtpConfig()
    webhooks: tuple[WebhookConfig, ...] = ()


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True
    session_hours: float = 12.0
    login_failures: int = 5
    login_window_seconds: float = 900.0
    provider_can_release: bool = False
    secure_cookies: bool | None = None  # None: Secure when the vault serves TLS
    require_totp: bool = False  # every login needs a one-time code (rempart.vault.dashboard.totp)


def _typed(cls: type, raw: dict[str, Any], name: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    known = {f.name for f in fields(cls)} - set(skip)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in skip:
            continue
        if k not in known:
            raise ConfigError(f"unknown key {k!r} in [{name}]")
        try:
            default = getattr(cls(**({"url": ""} if cls is WebhookConfig else {})), k)
        except TypeError:  # pragma: no cover
            default = None
        if isinstance(default, bool) or (default is None and k == "secure_cookies"):
            if not isinstance(v, bool):
                raise ConfigError(f"[{name}] {k} must be true or false")
        elif isinstance(default, int | float):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"[{name}] {k} must be a number >= 0")
            v = type(default)(v)
        elif isinstance(default, tuple):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"[{name}] {k} must be a list of strings")
            v = tuple(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise ConfigError(f"[{name}] {k} must be a string")
        out[k] = v
    return out


def parse_watch(raw: dict[str, Any], base_dir: Path) -> WatchConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[watch] must be a table")
    vals = _typed(WatchConfig, raw, "watch", skip=("smtp", "webhooks"))
    smtp_raw = raw.get("smtp", {})
    if not isinstance(smtp_raw, dict):
        raise ConfigError("[watch.smtp] must be a table")
    smtp = SmtpConfig(**_typed(SmtpConfig, smtp_raw, "watch.smtp"))
    if smtp.ca_file and not Path(smtp.ca_file).is_absolute():
        smtp = SmtpConfig(**{**{f.name: getattr(smtp, f.name) for f in fields(smtp)},
                             "ca_file": str(base_dir / smtp.ca_file)})
    hooks_raw = raw.get("webhooks", [])
    if not isinstance(hooks_raw, list) or not all(isinstance(h, dict) for h in hooks_raw):
        raise ConfigError("[[watch.webhooks]] must be an array of tables")
    hooks = []
    for h in hooks_raw:
        vals_h = _typed(WebhookConfig, h, "watch.webhooks")
        url = vals_h.get("url", "")
        if not url.startswith(("https://", "http://")):
            raise ConfigError("[[watch.webhooks]] url must start with https:// or http://")
        hooks.append(WebhookConfig(**vals_h))
    cfg = WatchConfig(**vals, smtp=smtp, webhooks=tuple(hooks))
    validate(cfg)
    return cfg


def validate(cfg: WatchConfig) -> None:
    from rempart.vault.watch.schedule import parse_days, parse_hours, zone

    parse_hours(cfg.open_hours)
    parse_days(cfg.open_days)
    zone(cfg.timezone)
    if cfg.report_weekday not in DAYS and cfg.report_weekday not in ("", "0", "off"):
        raise ConfigError("[watch] report_weekday must be mon..sun or off")
    bad = set(cfg.urgent_kinds) - set(KINDS)
    if bad:
        raise ConfigError(f"[watch] urgent_kinds: unknown kinds {', '.join(sorted(bad))}")
    if cfg.missing_after_seconds < cfg.grace_seconds:
        raise ConfigError("[watch] missing_after_seconds must be >= grace_seconds")
    if not 0 < cfg.quota_warn_ratio <= 1:
        raise ConfigError("[watch] quota_warn_ratio must be in (0, 1]")


def parse_dashboard(raw: dict[str, Any]) -> DashboardConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[dashboard] must be a table")
    return DashboardConfig(**_typed(DashboardConfig, raw, "dashboard"))

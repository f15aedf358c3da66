"""The agent's configuration: frozen dataclasses parsed once from TOML plus REMPART_* overrides.

Example (``rempart enroll`` writes one; every section but ``[repository]`` is optional)::

    [repository]
    url = "https://vault.example:8443/cabinet-dupont"   # or a local folder
    ca_file = "vault-ca.pem"          # relative paths are relative to the config file
    # pin = "sha256:..."              # or: the vault certificate's SHA-256 fingerprint
    token_file = "vault-token"        # 0600, written by `rempart enroll`
    attempts = 6                      # tries per request (backoff + jitter) before the run is retried

    [backup]
    paths = ["C:/Users/Public/Documents/Cabinet"]
    excludes = ["*.tmp", "~$*"]
    reread_days = 7
    detect = true

    [schedule]
    interval_minutes = 60
    opening_hours = "07:00-20:00"
    days = ["mon", "tue", "wed", "thu", "fri"]
    daily_at = "21:30"                # at least one run a day, every day
    timezone = "Europe/Paris"         # default: the machine's local time zone
    retry_attempts = 5
    retry_base_seconds = 30
    retry_max_seconds = 1800

    [limits]
    upload_kbps = 2000                # 0 = no cap (kilobytes per second)
    nice = 10                         # 0..19; Windows: below-normal priority class when > 0
    workers = 2
    max_inflight_files = 16

    [status]
    orange_after_hours = 26
    red_after_hours = 72

    [[sources]]                       # consistent copies, dumped into <state>/staging
    kind = "sqlite"                   # sqlite | postgres | mariadb | command
    name = "agenda"
    path = "C:/Cabinet/agenda.db"

    [[hooks]]                         # run before/after every backup, with a timeout
    name = "pause-imaging"
    pre = ["net", "stop", "ImagingSvc"]
    post = ["net", "start", "ImagingSvc"]
    timeout_seconds = 120

Environment overrides (for service managers and tests): ``REMPART_REPOSITORY``,
``REMPART_VAULT_CA``, ``REMPART_VAULT_PIN``, ``REMPART_VAULT_TOKEN_FILE``, ``REMPART_UPLOAD_KBPS``, ``REMPART_NICE``,
``REMPART_INTERVAL_MINUTES``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time as dtime
from pathlib import Path
from typing import Any

from rempart.agent.sources import SourceSpec, parse_source
from rempart.core.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class RepositorySettings:
    url: str
    ca_file: Path | None = None
    pin: str = ""  # SHA-256 fingerprint of the vault's certificate (instead of a CA file)
    token_file: Path | None = None
    attempts: int = 6  # tries per storage request before the run fails and the schedule retries it


@dataclass(frozen=True)
class BackupSettings:
    paths: tuple[Path, ...] = ()
    excludes: tuple[str, ...] = ()
    reread_days: float = 7.0
    detect: bool = True


@dataclass(frozen=True)
class ScheduleSettings:
    interval_minutes: float = 60.0
    opening_start: dtime = dtime(7, 0)
    opening_end: dtime = dtime(20, 0)
    days: frozenset[int] = frozenset(range(5))  # 0 = Monday
    daily_at: dtime | None = dtime(21, 30)
    timezone: str = ""  # "" = the machine's local zone, resolved at the edge
    retry_attempts: int = 5
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 1800.0


@dataclass(frozen=True)
class LimitSettings:
    upload_kbps: float = 0.0
    nice: int = 10
    workers: int = 2
    max_inflight_files: int = 16


@dataclass(frozen=True)
class StatusSettings:
    orange_after_hours: float = 26.0
    red_after_hours: float = 72.0


@dataclass(frozen=True)
class HookSpec:
    name: str
    pre: tuple[str, ...] = ()
    post: tuple[str, ...] = ()
    timeout_seconds: float = 300.0
    required: bool = True  # a failing pre hook fails the run


@dataclass(frozen=True)
class AgentConfig:
    path: Path | None
    repository: RepositorySettings
    backup: BackupSettings = BackupSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    limits: LimitSettings = LimitSettings()
    status: StatusSettings = StatusSettings()
    sources: tuple[SourceSpec, ...] = ()
    hooks: tuple[HookSpec, ...] = field(default=())


def load_config(path: Path, env: Mapping[str, str]) -> AgentConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"agent configuration {path} not found",
                          hint="run `rempart enroll` first, or pass --config FILE") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the agent configuration {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_config(raw, env, base=path.parent, path=path)


def parse_config(raw: dict[str, Any], env: Mapping[str, str], *, base: Path, path: Path | None = None) -> AgentConfig:
    _only(raw, {"repository", "backup", "schedule", "limits", "status", "sources", "hooks"}, "top level")
    repo_raw = _table(raw, "repository")
    _only(repo_raw, {"url", "ca_file", "pin", "token_file", "attempts"}, "[repository]")
    url = env.get("REMPART_REPOSITORY") or _str(repo_raw, "url", "[repository]", required=True) or ""
    ca = env.get("REMPART_VAULT_CA") or _str(repo_raw, "ca_file", "[repository]")
    tok = env.get("REMPART_VAULT_TOKEN_FILE") or _str(repo_raw, "token_file", "[repository]")
    pin = env.get("REMPART_VAULT_PIN") or _str(repo_raw, "pin", "[repository]") or ""
    repository = RepositorySettings(
        url=url, ca_file=_path(base, ca), pin=pin, token_file=_path(base, tok),
        attempts=int(_num(repo_raw, "attempts", "[repository]", 6, lo=1, hi=100, integer=True)))
    if url.startswith("https://") and repository.token_file is None:
        raise ConfigError("[repository] a vault URL needs token_file")

    b = _table(raw, "backup")
    _only(b, {"paths", "excludes", "reread_days", "detect"}, "[backup]")
    backup = BackupSettings(
        paths=tuple(_path(base, p) or Path(p) for p in _strlist(b, "paths", "[backup]")),
        excludes=tuple(_strlist(b, "excludes", "[backup]")),
        reread_days=_num(b, "reread_days", "[backup]", 7.0, lo=0),
        detect=_bool(b, "detect", "[backup]", True),
    )

    s = _table(raw, "schedule")
    _only(s, {"interval_minutes", "opening_hours", "days", "daily_at", "timezone", "retry_attempts",
              "retry_base_seconds", "retry_max_seconds"}, "[schedule]")
    interval = _num(s, "interval_minutes", "[schedule]", 60.0, lo=1)
    if env.get("REMPART_INTERVAL_MINUTES"):
        interval = _env_num(env, "REMPART_INTERVAL_MINUTES", lo=0.01)
    start, end = _hours(s.get("opening_hours", "07:00-20:00"))
    days = _days(s.get("days", list(DAYS[:5])))
    daily_raw = s.get("daily_at", "21:30")
    daily = None if daily_raw in ("", "off") else _clock_time(daily_raw, "[schedule] daily_at")
    if daily is None and not days:
        raise ConfigError("[schedule] needs opening days or daily_at: otherwise no backup ever runs")
    schedule = ScheduleSettings(
        interval_minutes=interval, opening_start=start, opening_end=end, days=days, daily_at=daily,
        timezone=_str(s, "timezone", "[schedule]") or "",
        retry_attempts=int(_num(s, "retry_attempts", "[schedule]", 5, lo=0, integer=True)),
        retry_base_seconds=_num(s, "retry_base_seconds", "[schedule]", 30.0, lo=0),
        retry_max_seconds=_num(s, "retry_max_seconds", "[schedule]", 1800.0, lo=0),
    )
    if schedule.timezone:
        _check_zone(schedule.timezone)

    lim = _table(raw, "limits")
    _only(lim, {"upload_kbps", "nice", "workers", "max_inflight_files"}, "[limits]")
    limits = LimitSettings(
        upload_kbps=_num(lim, "upload_kbps", "[limits]", 0.0, lo=0),
        nice=int(_num(lim, "nice", "[limits]", 10, lo=0, hi=19, integer=True)),
        workers=int(_num(lim, "workers", "[limits]", 2, lo=1, hi=64, integer=True)),
        max_inflight_files=int(_num(lim, "max_inflight_files", "[limits]", 16, lo=1, hi=1024, integer=True)),
    )
    if env.get("REMPART_UPLOAD_KBPS"):
        limits = replace(limits, upload_kbps=_env_num(env, "REMPART_UPLOAD_KBPS", lo=0))
    if env.get("REMPART_NICE"):
        limits = replace(limits, nice=int(_env_num(env, "REMPART_NICE", lo=0, hi=19)))

    st = _table(raw, "status")
    _only(st, {"orange_after_hours", "red_after_hours"}, "[status]")
    status = StatusSettings(
        orange_after_hours=_num(st, "orange_after_hours", "[status]", 26.0, lo=0),
        red_after_hours=_num(st, "red_after_hours", "[status]", 72.0, lo=0),
    )
    if status.red_after_hours < status.orange_after_hours:
        raise ConfigError("[status] red_after_hours must be >= orange_after_hours")

    sources = tuple(parse_source(x, base, i) for i, x in enumerate(_array(raw, "sources")))
    hooks = tuple(_hook(x, i) for i, x in enumerate(_array(raw, "hooks")))
    names = [x.name for x in sources] + [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ConfigError("every [[sources]] and [[hooks]] entry needs a distinct name")
    return AgentConfig(path=path, repository=repository, backup=backup, schedule=schedule, limits=limits,
                       status=status, sources=sources, hooks=hooks)


# --- helpers --------------------------------------------------------------------------------


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                          hint=f"allowed: {', '.join(sorted(allowed))}")


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"[{key}] must be a table")
    return v


def _array(raw: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConfigError(f"[[{key}]] must be an array of tables")
    return v


def _str(d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{where} {key} is required")
        return None
    if not isinstance(v, str) or (required and not v.strip()):
        raise ConfigError(f"{where} {key} must be a non-empty string")
    return v


def _strlist(d: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"{where} {key} must be a list of non-empty strings")
    return v


def _num(d: Mapping[str, Any], key: str, where: str, default: float, *, lo: float | None = None,
         hi: float | None = None, integer: bool = False) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not float(v).is_integer()):
        raise ConfigError(f"{where} {key} must be {'an integer' if integer else 'a number'}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{where} {key} must be between {lo} and {hi if hi is not None else 'any'}")
    return float(v)


def _env_num(env: Mapping[str, str], key: str, *, lo: float, hi: float | None = None) -> float:
    try:
        v = float(env[key])
    except ValueError:
        raise ConfigError(f"{key} must be a number") from None
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{key} must be between {lo} and {hi if hi is not None else 'any'}")
    return v


def _bool(d: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where} {key} must be true or false")
    return v


def _path(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _clock_time(v: Any, where: str) -> dtime:
    if not isinstance(v, str):
        raise ConfigError(f"{where} must be a time like \"21:30\"")
    try:
        h, m = v.strip().split(":")
        return dtime(int(h), int(m))
    except ValueError:
        raise ConfigError(f"{where} must be a time like \"21:30\", got {v[:20]!r}") from None


def _hours(v: Any) -> tuple[dtime, dtime]:
    if not isinstance(v, str) or "-" not in v:
        raise ConfigError("[schedule] opening_hours must look like \"07:00-20:00\"")
    a, b = v.split("-", 1)
    start, end = _clock_time(a, "[schedule] opening_hours"), _clock_time(b, "[schedule] opening_hours")
    if end <= start:
        raise ConfigError("[schedule] opening_hours must end after they start (same day)")
    return start, end


def _days(v: Any) -> frozenset[int]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError("[schedule] days must be a list like [\"mon\", \"tue\"]")
    out = set()
    for d in v:
        key = d.strip().lower()[:3]
        if key not in DAYS:
            raise ConfigError(f"[schedule] unknown day {d[:12]!r}; use mon, tue, wed, thu, fri, sat, sun")
        out.add(DAYS.index(key))
    return frozenset(out)


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[schedule] unknown time zone {name[:40]!r}",
                          hint="use an IANA name like Europe/Paris (on Windows: pip install tzdata)") from None


def _hook(d: dict[str, Any], i: int) -> HookSpec:
    where = f"[[hooks]] #{i + 1}"
    _only(d, {"name", "pre", "post", "timeout_seconds", "required"}, where)
    name = _str(d, "name", where, required=True)
    assert name is not None
    pre, post = _strlist(d, "pre", where), _strlist(d, "post", where)
    if not pre and not post:
        raise ConfigError(f"{where} needs a pre or post command (a list: program then arguments)")
    return HookSpec(name=name, pre=tuple(pre), post=tuple(post),
                    timeout_seconds=_num(d, "timeout_seconds", where, 300.0, lo=1),
                    required=_bool(d, "required", where, True))

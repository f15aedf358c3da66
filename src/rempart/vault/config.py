"""Vault configuration: frozen dataclasses parsed once from TOML at the edge.

Example (every key is optional; paths are relative to ``data_dir``, itself relative to the
config file)::

    data_dir = "vault-data"

    [listen]
    host = "127.0.0.1"
    port = 8443

    [tls]
    enabled = true
    cert = "tls/cert.pem"
    key = "tls/key.pem"
    self_signed = true              # generate cert/key on first start if missing
    hostnames = ["localhost", "127.0.0.1"]

    [storage]
    kind = "local"                  # or "s3"
    path = "storage"
    # s3: endpoint, bucket, region, access_key, secret_key, lock_days
    location = ""                   # told to practices: where their data is hosted (e.g. "France, HDS")

    [replica]                       # optional: a copy of every practice's objects elsewhere
    kind = "local"                  # or "s3" (same keys as [storage]); local needs a path
    path = "/mnt/second-disk/rempart"

    [database]
    url = ""                        # default sqlite:///<data_dir>/vault.db; or postgresql+psycopg://...

    [retention]                     # defaults for new practices
    keep_last = 10
    hourly = 24
    daily = 14
    weekly = 8
    monthly = 12
    yearly = 3
    min_age_days = 30

    [limits]
    max_request_bytes = 67108864
    default_quota_bytes = 0         # 0 = unlimited
    auth_failures_per_ip = 20
    auth_failures_per_practice = 100
    auth_window_seconds = 300
    enroll_code_ttl_seconds = 86400
    two_person = false              # true: policy changes, releases, closings, deletions need 2 admins

    [gc]
    grace_seconds = 86400
    enabled = true                  # retention + GC inside `vault serve` (false: use `vault gc`)
    interval_seconds = 86400        # between scheduled passes
    jitter_seconds = 900            # random extra wait, so vaults sharing a storage spread out
    scrub_gib = 0                   # after each practice's GC, re-hash up to this much of it (0 = off)

    [metrics]
    public = false                  # true: /metrics without the admin token
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rempart.core.errors import ConfigError
from rempart.vault.watch.config import DashboardConfig, WatchConfig, parse_dashboard, parse_watch


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 10
    hourly: int = 24
    daily: int = 14
    weekly: int = 8
    monthly: int = 12
    yearly: int = 3
    min_age_days: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RetentionPolicy:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown retention keys: {', '.join(sorted(unknown))}")
        out: dict[str, Any] = {}
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"retention {k} must be a number >= 0")
            out[k] = float(v) if k == "min_age_days" else int(v)
        return cls(**out)


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8443


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = True
    cert: Path = Path("tls/cert.pem")
    key: Path = Path("tls/key.pem")
    self_signed: bool = True
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class StorageConfig:
    kind: str = "local"
    path: Path = Path("storage")
    endpoint: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    lock_days: int = 0
    #: where the data is hosted, told to the practices (status, weekly report), e.g.
    #: "France, OVHcloud Roubaix (HDS)"; free text, never a credential
    location: str = ""


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 64 * 1024 * 1024
    default_quota_bytes: int = 0
    auth_failures_per_ip: int = 20
    auth_failures_per_practice: int = 100
    auth_window_seconds: float = 300.0
    enroll_code_ttl_seconds: float = 86400.0
    #: admin API requests that can lead to deletion need a second admin token (rempart.vault.approvals)
    two_person: bool = False


@dataclass(frozen=True)
class VaultConfig:
    data_dir: Path
    listen: ListenConfig = ListenConfig()
    tls: TlsConfig = TlsConfig()
    storage: StorageConfig = StorageConfig()
    #: [replica]: a second storage every practice's objects are copied to (rempart.vault.replica)
    replica: StorageConfig | None = None
    database_url: str = ""
    retention: RetentionPolicy = RetentionPolicy()
    limits: Limits = Limits()
    gc_grace_seconds: float = 86400.0
    gc_enabled: bool = True
    gc_interval_seconds: float = 86400.0
    gc_jitter_seconds: float = 900.0
    #: bytes per practice the scheduled pass re-hashes after its GC (rempart.vault.scrub); 0: none
    gc_scrub_bytes: int = 0
    metrics_public: bool = False
    # [watch] and [dashboard]: alerts, channels, reports and web UI (rempart.vault.watch)
    watch: WatchConfig = field(default_factory=WatchConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'vault.db'}"

    def data_location(self) -> dict[str, str | None]:
        """Where the practices' data is hosted, as the provider wrote it (``[storage]`` and
        ``[replica]`` ``location``): told to each practice (status, weekly report), as HDS asks."""
        rep = self.replica
        return {"vault": self.storage.location or None, "replica": (rep.location or None) if rep else None}

    @property
    def audit_checkpoint(self) -> Path:
        return self.data_dir / "audit-checkpoint.json"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    sec = raw.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"[{name}] must be a table")
    return sec


def _build(cls: type, sec: dict[str, Any], name: str, base: Path | None = None) -> Any:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    if base is not None:  # default relative paths live under data_dir, never the working directory
        for k in known:
            d = getattr(cls(), k)
            if isinstance(d, Path) and not d.is_absolute():
                out[k] = base / d
    for k, v in sec.items():
        if k not in known:
            raise ConfigError(f"unknown key {k!r} in [{name}]")
        default = getattr(cls(), k) if k != "data_dir" else None
        if isinstance(default, Path):
            if not isinstance(v, str):
                raise ConfigError(f"[{name}] {k} must be a path string")
            p = Path(v)
            v = p if p.is_absolute() or base is None else base / p
        elif isinstance(default, tuple):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"[{name}] {k} must be a list of strings")
            v = tuple(v)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"[{name}] {k} must be true or false")
        elif isinstance(default, int | float):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"[{name}] {k} must be a number >= 0")
            v = type(default)(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise ConfigError(f"[{name}] {k} must be a string")
        out[k] = v
    try:
        return cls(**out)
    except TypeError as exc:  # pragma: no cover - guarded above
        raise ConfigError(f"[{name}]: {exc}") from exc


def _storage(sec: dict[str, Any], name: str, data_dir: Path) -> StorageConfig:
    st: StorageConfig = _build(StorageConfig, sec, name, data_dir)
    if st.kind not in ("local", "s3"):
        raise ConfigError(f"[{name}] kind must be 'local' or 's3'")
    if st.kind == "s3" and not (st.endpoint and st.bucket):
        raise ConfigError(f"[{name}] kind = 's3' needs endpoint and bucket")
    return st


def parse_config(raw: dict[str, Any], base_dir: Path) -> VaultConfig:
    top_known = {"data_dir", "listen", "tls", "storage", "replica", "database", "retention", "limits", "gc",
                 "metrics", "watch", "dashboard"}
    unknown = set(raw) - top_known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    dd = raw.get("data_dir", ".")
    if not isinstance(dd, str):
        raise ConfigError("data_dir must be a path string")
    data_dir = Path(dd) if Path(dd).is_absolute() else (base_dir / dd)
    data_dir = data_dir.resolve()
    storage = _storage(_section(raw, "storage"), "storage", data_dir)
    replica = _storage(_section(raw, "replica"), "replica", data_dir) if "replica" in raw else None
    if replica is not None and replica.kind == "local" and "path" not in raw["replica"]:
        raise ConfigError("[replica] kind = 'local' needs a path (on another disk or host)")
    if replica is not None and (replica.kind, replica.path, replica.endpoint, replica.bucket) == \
            (storage.kind, storage.path, storage.endpoint, storage.bucket):
        raise ConfigError("[replica] must be another place than [storage]")
    retention = RetentionPolicy.from_dict(_section(raw, "retention"))
    if storage.kind == "s3" and storage.lock_days and storage.lock_days < retention.min_age_days:
        raise ConfigError("[storage] lock_days must be at least [retention] min_age_days",
                          hint="Object Lock must protect every object for at least the minimum age")
    db = _section(raw, "database")
    if set(db) - {"url"} or not isinstance(db.get("url", ""), str):
        raise ConfigError("[database] takes only url (a string)")
    gc = _section(raw, "gc")
    metrics = _section(raw, "metrics")
    if set(gc) - {"grace_seconds", "enabled", "interval_seconds", "jitter_seconds", "scrub_gib"}:
        raise ConfigError("[gc] takes only grace_seconds, enabled, interval_seconds, jitter_seconds and scrub_gib")
    gc_num: dict[str, float] = {}
    for k, d in (("grace_seconds", 86400.0), ("interval_seconds", 86400.0), ("jitter_seconds", 900.0),
                 ("scrub_gib", 0.0)):
        v = gc.get(k, d)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"[gc] {k} must be a number >= 0")
        gc_num[k] = float(v)
    if gc_num["interval_seconds"] and gc_num["interval_seconds"] < 1:
        raise ConfigError("[gc] interval_seconds must be at least 1 (or 0 to turn scheduled GC off)")
    gc_enabled = gc.get("enabled", True)
    if not isinstance(gc_enabled, bool):
        raise ConfigError("[gc] enabled must be true or false")
    renew_window = storage.lock_days * 86400 / 2 if storage.kind == "s3" else 0
    gc_every = gc_num["interval_seconds"] + gc_num["jitter_seconds"]
    if renew_window and gc_enabled and gc_num["interval_seconds"] and gc_every >= renew_window:
        raise ConfigError(
            "[gc] interval_seconds + jitter_seconds must be less than half of [storage] lock_days",
            hint="each GC pass renews the Object Lock of kept objects that have less than half a lock "
                 "period left; passes further apart would let locks lapse")
    public = metrics.get("public", False)
    if set(metrics) - {"public"} or not isinstance(public, bool):
        raise ConfigError("[metrics] takes only public (true/false)")
    return VaultConfig(
        data_dir=data_dir,
        listen=_build(ListenConfig, _section(raw, "listen"), "listen"),
        tls=_build(TlsConfig, _section(raw, "tls"), "tls", data_dir),
        storage=storage,
        replica=replica,
        database_url=str(db.get("url", "")),
        retention=retention,
        limits=_build(Limits, _section(raw, "limits"), "limits"),
        gc_grace_seconds=gc_num["grace_seconds"],
        gc_enabled=gc_enabled and gc_num["interval_seconds"] > 0,
        gc_interval_seconds=gc_num["interval_seconds"],
        gc_jitter_seconds=gc_num["jitter_seconds"],
        gc_scrub_bytes=int(gc_num["scrub_gib"] * 2**30),
        metrics_public=public,
        watch=parse_watch(_section(raw, "watch"), data_dir),
        dashboard=parse_dashboard(_section(raw, "dashboard")),
    )


def load_config(path: Path) -> VaultConfig:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"vault config {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"vault config {path} is not valid TOML: {exc}") from exc
    return parse_config(raw, Path(path).resolve().parent)

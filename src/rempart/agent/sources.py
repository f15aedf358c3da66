"""Consistent copies of live databases, dumped into a staging folder that the backup includes.

* ``sqlite``: the online backup API (``sqlite3.Connection.backup``), one step, so the copy is a
  single consistent state even while the application writes; then ``PRAGMA quick_check``.
* ``postgres``: ``pg_dump`` (custom format by default, or plain SQL) — one transaction, a
  consistent snapshot of the database. Connection details go through libpq's environment
  (``PGHOST`` ... ``PGPASSWORD``), never the command line.
* ``mariadb``: ``mariadb-dump`` (or ``mysqldump``) ``--single-transaction`` (consistent for
  InnoDB); the password goes through a 0600 ``--defaults-extra-file`` that is removed after.
* ``command``: any program whose standard output is the export (practice software tools).

Each dump is written to ``NAME.EXT.partial`` and renamed when complete; the previous dump is
removed first, so a failed dump is never silently replaced by a stale one.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from rempart.agent.hooks import run_command
from rempart.core.errors import ConfigError, SourceError

KINDS = ("sqlite", "postgres", "mariadb", "command")
_KEYS = {
    "sqlite": {"path"},
    "postgres": {"dsn", "password_file", "password_env", "format", "program"},
    "mariadb": {"database", "host", "port", "socket", "user", "password_file", "password_env", "program"},
    "command": {"command", "extension"},
}


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    name: str
    timeout_seconds: float = 3600.0
    path: Path | None = None
    dsn: str = ""
    format: str = "custom"
    database: str = ""
    host: str = ""
    port: int = 0
    socket: str = ""
    user: str = ""
    password_file: Path | None = None
    password_env: str = ""
    program: str = ""
    command: tuple[str, ...] = ()
    extension: str = "out"

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"SourceSpec(kind={self.kind!r}, name={self.name!r})"

    @property
    def filename(self) -> str:
        ext = {"sqlite": "sqlite", "mariadb": "sql", "command": self.extension}.get(self.kind)
        if self.kind == "postgres":
            ext = "pgdump" if self.format == "custom" else "sql"
        return f"{self.name}.{ext}"


@dataclass(frozen=True)
class SourceResult:
    name: str
    kind: str
    ok: bool
    bytes: int = 0
    seconds: float = 0.0
    error: str = ""


def parse_source(d: dict[str, Any], base: Path, i: int) -> SourceSpec:
    where = f"[[sources]] #{i + 1}"
    kind = d.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    allowed = {"kind", "name", "timeout_seconds"} | _KEYS[kind]
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind {kind}")
    name = d.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"{where}: name must be letters, digits, '-' or '_' (it names the dump file)")
    for k, v in d.items():
        if k == "command":
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{where}: command must be a list: program then arguments")
        elif k in ("timeout_seconds", "port"):
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ConfigError(f"{where}: {k} must be a positive number")
        elif not isinstance(v, str):
            raise ConfigError(f"{where}: {k} must be a string")
    if kind == "sqlite" and not d.get("path"):
        raise ConfigError(f"{where}: a sqlite source needs path")
    if kind == "postgres" and not d.get("dsn"):
        raise ConfigError(f"{where}: a postgres source needs dsn (postgresql://user@host:port/db)")
    if kind == "postgres" and d.get("format", "custom") not in ("custom", "plain"):
        raise ConfigError(f"{where}: format must be custom or plain")
    if kind == "mariadb" and not d.get("database"):
        raise ConfigError(f"{where}: a mariadb source needs database")
    if kind == "command" and not d.get("command"):
        raise ConfigError(f"{where}: a command source needs command")

    def p(v: str | None) -> Path | None:
        if not v:
            return None
        q = Path(v).expanduser()
        return q if q.is_absolute() else base / q

    return SourceSpec(
        kind=kind, name=name, timeout_seconds=float(d.get("timeout_seconds", 3600)),
        path=p(d.get("path")), dsn=d.get("dsn", ""), format=d.get("format", "custom"),
        database=d.get("database", ""), host=d.get("host", ""), port=int(d.get("port", 0)),
        socket=d.get("socket", ""), user=d.get("user", ""), password_file=p(d.get("password_file")),
        password_env=d.get("password_env", ""), program=d.get("program", ""),
        command=tuple(d.get("command", ())), extension=d.get("extension", "out"),
    )


def dump_all(specs: tuple[SourceSpec, ...], staging: Path, env: Mapping[str, str]) -> list[SourceResult]:
    """Dump every source into ``staging``; a failure is recorded, not raised, so the other
    sources and the file backup still run."""
    staging.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in specs:
        start = time.monotonic()
        target = staging / spec.filename
        partial = target.with_name(target.name + ".partial")
        for stale in (target, partial):
            stale.unlink(missing_ok=True)
        try:
            _DUMPERS[spec.kind](spec, partial, env)
            os.replace(partial, target)
            out.append(SourceResult(spec.name, spec.kind, True, target.stat().st_size, time.monotonic() - start))
        except SourceError as exc:
            partial.unlink(missing_ok=True)
            out.append(SourceResult(spec.name, spec.kind, False, 0, time.monotonic() - start, exc.message))
    return out


def _password(spec: SourceSpec, env: Mapping[str, str]) -> str | None:
    if spec.password_file is not None:
        try:
            return spec.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SourceError(f"source {spec.name}: cannot read its password file ({exc.strerror})") from exc
    if spec.password_env:
        value = env.get(spec.password_env)
        if value is None:
            raise SourceError(f"source {spec.name}: environment variable {spec.password_env} is not set")
        return value
    return None


def dump_sqlite(spec: SourceSpec, target: Path, env: Mapping[str, str]) -> None:
    assert spec.path is not None
    if not spec.path.is_file():
        raise SourceError(f"source {spec.name}: SQLite file not found")
    try:
        src = sqlite3.connect(f"{spec.path.as_uri()}?mode=ro", uri=True, timeout=spec.timeout_seconds)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # one step: a single consistent read transaction
                row = dst.execute("PRAGMA quick_check").fetchone()
                if not row or row[0] != "ok":
                    raise SourceError(f"source {spec.name}: the SQLite copy fails its integrity check")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise SourceError(f"source {spec.name}: SQLite backup failed ({exc})") from exc


def find_program(configured: str, names: tuple[str, ...], globs: tuple[str, ...] = ()) -> str:
    if configured:
        return configured
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    for pattern in globs:
        hits = sorted(glob.glob(pattern), key=_version_key)
        if hits:
            return hits[-1]
    return names[0]


def _version_key(path: str) -> list[int]:
    return [int(part) for part in Path(path).parts if part.isdigit()]


def postgres_env(dsn: str, password: str | None) -> dict[str, str]:
    """libpq environment for ``dsn`` (postgresql://user:pw@host:port/db?sslmode=...)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SourceError("postgres dsn must start with postgresql://")
    out: dict[str, str] = {}
    if parts.hostname:
        out["PGHOST"] = unquote(parts.hostname)
    if parts.port:
        out["PGPORT"] = str(parts.port)
    if parts.username:
        out["PGUSER"] = unquote(parts.username)
    if parts.password:
        out["PGPASSWORD"] = unquote(parts.password)
    if parts.path.strip("/"):
        out["PGDATABASE"] = unquote(parts.path.strip("/"))
    for k, v in parse_qsl(parts.query):
        if k == "host":
            out["PGHOST"] = v
        elif k == "sslmode":
            out["PGSSLMODE"] = v
    if password is not None:
        out["PGPASSWORD"] = password
    return out


def dump_postgres(spec: SourceSpec, target: Path, env: Mapping[str, str]) -> None:
    program = find_program(spec.program, ("pg_dump",), ("/usr/lib/postgresql/*/bin/pg_dump",))
    run_env = {k: v for k, v in env.items() if not k.startswith("PG")}
    run_env.update(postgres_env(spec.dsn, _password(spec, env)))
    fmt = "-Fc" if spec.format == "custom" else "-Fp"
    with open(target, "wb") as f:
        res = run_command([program, fmt, "--no-password"], timeout=spec.timeout_seconds, env=run_env,
                          stdout=f, what=f"source {spec.name} (pg_dump)")
        f.flush()
        os.fsync(f.fileno())
    if res.returncode:
        raise SourceError(f"source {spec.name}: pg_dump failed (code {res.returncode}): {_tail(res.stderr)}")


def dump_mariadb(spec: SourceSpec, target: Path, env: Mapping[str, str]) -> None:
    program = find_program(spec.program, ("mariadb-dump", "mysqldump"))
    password = _password(spec, env)
    lines = ["[client]"]
    if spec.user:
        lines.append(f"user={spec.user}")
    if password is not None:
        lines.append('password="' + password.replace("\\", "\\\\").replace('"', '\\"') + '"')
    if spec.socket:
        lines.append(f"socket={spec.socket}")
    if spec.host:
        lines.append(f"host={spec.host}")
    if spec.port:
        lines.append(f"port={spec.port}")
    extra = target.with_name(f".{spec.name}.cnf")
    fd = os.open(extra, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as cnf:
        cnf.write("\n".join(lines) + "\n")
    try:
        with open(target, "wb") as f:
            res = run_command(
                [program, f"--defaults-extra-file={extra}", "--single-transaction", "--quick",
                 "--routines", "--triggers", "--events", "--hex-blob", "--databases", spec.database],
                timeout=spec.timeout_seconds, env=dict(env), stdout=f, what=f"source {spec.name} (mariadb-dump)")
            f.flush()
            os.fsync(f.fileno())
    finally:
        extra.unlink(missing_ok=True)
    if res.returncode:
        raise SourceError(f"source {spec.name}: mariadb-dump failed (code {res.returncode}): {_tail(res.stderr)}")


def dump_command(spec: SourceSpec, target: Path, env: Mapping[str, str]) -> None:
    with open(target, "wb") as f:
        res = run_command(spec.command, timeout=spec.timeout_seconds, env=dict(env), stdout=f,
                          what=f"source {spec.name}")
        f.flush()
        os.fsync(f.fileno())
    if res.returncode:
        raise SourceError(f"source {spec.name}: exited with code {res.returncode}: {_tail(res.stderr)}")


def _tail(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " / ".join(lines[-2:])[:400] or "(no message)"


_DUMPERS = {"sqlite": dump_sqlite, "postgres": dump_postgres, "mariadb": dump_mariadb, "command": dump_command}

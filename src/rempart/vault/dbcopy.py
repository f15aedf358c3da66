"""A consistent copy of the vault's SQLite database while the vault serves.

The index can be rebuilt from the stored objects alone (``rempart vault rebuild-index``), but
tokens, retention policies, legal holds, closings, watch settings, dashboard users and the audit
trail live only in the database. ``rempart vault backup-db --output FILE`` copies it with SQLite's
online backup API (a consistent snapshot even while requests write; a plain file copy of a
database in WAL mode is not), into a new file that never replaces one, fsynced. The provider
then stores that file like any secret-bearing backup (it holds token and password *hashes*,
never tokens): encrypted, off the host, ideally under Object Lock. PostgreSQL has ``pg_dump``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rempart.core.errors import ConfigError, LocalError, UserError
from rempart.vault import db
from rempart.vault.service import Vault


def copy_database(vault: Vault, output: Path, *, actor: str) -> dict[str, object]:
    url = vault.config.db_url
    if not url.startswith("sqlite:///"):
        raise ConfigError("backup-db copies the default SQLite database", hint="for PostgreSQL use pg_dump")
    source = url[len("sqlite:///"):]
    if output.exists():
        raise UserError(f"{output} already exists", hint="choose a new file name")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        src = sqlite3.connect(source)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, output)  # never replaces a file that appeared meanwhile
    except (OSError, sqlite3.Error) as exc:
        raise LocalError(f"cannot copy the vault database to {output}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    check = sqlite3.connect(output)
    try:
        records, head = check.execute("SELECT count(*), (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1) "
                                      "FROM audit").fetchone()
    finally:
        check.close()
    info: dict[str, object] = {"output": str(output), "bytes": output.stat().st_size,
                               "audit_records": records, "audit_head": head}
    with db.write(vault.engine) as conn:
        vault.audit(conn, actor, "db.copy", None, "ok", {"bytes": info["bytes"], "audit_records": records})
    vault.checkpoint(conn)
    return info

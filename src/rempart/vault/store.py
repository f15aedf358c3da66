"""Where the vault keeps objects: one storage namespace (a repository) per practice.

Local: ``<storage.path>/<practice>/`` is a :class:`LocalBackend`. S3: the bucket holds
``<practice>/...`` keys through the :class:`S3Backend`, with Object Lock COMPLIANCE retention
of ``lock_days`` when set (it must be at least the retention minimum age).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from rempart.core.clock import Clock
from rempart.core.errors import ConfigError, UserError
from rempart.storage.base import Backend, FileType, Handle
from rempart.vault.config import StorageConfig

PRACTICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_practice_name(name: str) -> str:
    if not PRACTICE_RE.match(name):
        raise UserError(
            f"invalid practice name {name[:70]!r}",
            hint="use 1-63 lowercase letters, digits and dashes, starting with a letter or digit",
        )
    return name


class Store:
    def __init__(self, config: StorageConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    @property
    def retention_locked(self) -> bool:
        return self.config.kind == "s3" and self.config.lock_days > 0

    def backend(self, practice: str) -> Backend:
        check_practice_name(practice)
        with self._lock:
            b = self._backends.get(practice)
            if b is None:
                b = self._open(practice)
                self._backends[practice] = b
            return b

    def _open(self, practice: str) -> Backend:
        if self.config.kind == "local":
            from rempart.storage.local import LocalBackend

            return LocalBackend(Path(self.config.path) / practice, create=True)
        if self.config.kind == "s3":
            from rempart.storage.s3 import S3Backend, S3Config

            c = self.config
            return S3Backend(
                S3Config(
                    endpoint=c.endpoint, bucket=c.bucket, prefix=practice, access_key=c.access_key,
                    secret_key=c.secret_key, region=c.region, object_lock_days=c.lock_days or None,
                ),
                clock=self.clock,
                create=False,
            )
        raise ConfigError(f"unknown storage kind {self.config.kind!r}")

    def practice_names(self) -> list[str]:
        """Practices that have a namespace in storage: folders of the local storage, or the
        top-level key prefixes of the S3 bucket's versions (listed, so that ``rebuild-index`` needs
        no row)."""
        if self.config.kind == "s3":
            return self._s3_practice_names()
        if self.config.kind != "local":
            return []
        root = Path(self.config.path)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and PRACTICE_RE.match(p.name))

    def _s3_practice_names(self) -> list[str]:
        from rempart.storage.s3 import S3Backend, S3Config, map_s3_errors

        c = self.config
        client = S3Backend._make_client(S3Config(
            endpoint=c.endpoint, bucket=c.bucket, prefix="", access_key=c.access_key, secret_key=c.secret_key,
            region=c.region))
        names: set[str] = set()
        try:
            with map_s3_errors(f"list practices in bucket {c.bucket}"):
                # the version list, not the object list: a practice whose every key lies under
                # a delete marker (put by a stolen credential) still has its locked versions
                pages = client.get_paginator("list_object_versions").paginate(Bucket=c.bucket, Delimiter="/")
                for page in pages:
                    for cp in page.get("CommonPrefixes", []):
                        name = str(cp.get("Prefix", "")).rstrip("/")
                        if PRACTICE_RE.match(name):
                            names.add(name)
        finally:
            client.close()
        return sorted(names)

    def prepare(self) -> None:
        """Create what the store needs (the S3 bucket with Object Lock when asked)."""
        if self.config.kind == "local":
            Path(self.config.path).mkdir(parents=True, exist_ok=True)
        else:
            from rempart.storage.s3 import S3Backend, S3Config

            c = self.config
            S3Backend(
                S3Config(endpoint=c.endpoint, bucket=c.bucket, prefix="", access_key=c.access_key,
                         secret_key=c.secret_key, region=c.region, object_lock_days=c.lock_days or None),
                clock=self.clock,
                create=True,
            ).close()

    def close(self) -> None:
        with self._lock:
            for b in self._backends.values():
                b.close()
            self._backends.clear()


def handle(ftype: FileType, name: str) -> Handle:
    return Handle(ftype, name)

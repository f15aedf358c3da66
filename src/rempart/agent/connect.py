"""Open the repository and the vault client from the agent's configuration (edge code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rempart.agent.config import AgentConfig, RepositorySettings
from rempart.core.clock import Clock
from rempart.core.errors import ConfigError, NotEnrolledError
from rempart.repository.repo import Repository
from rempart.storage.base import Backend
from rempart.storage.wrappers import LimitedBackend, RetryBackend

TOKEN_FILE = "vault-token"  # noqa: S105


def is_vault(url: str) -> bool:
    return url.lower().startswith(("https://", "http://"))


def read_token(settings: RepositorySettings) -> str:
    path = settings.token_file
    if path is None:
        raise ConfigError("[repository] token_file is not set")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NotEnrolledError(f"the vault token file {path} is missing",
                               hint="enroll this machine again with `rempart enroll`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the vault token file {path}: {exc.strerror}") from exc
    if not token:
        raise NotEnrolledError(f"the vault token file {path} is empty")
    return token


def write_secret_file(path: Path, text: str) -> None:
    """Create/replace ``path`` with mode 0600 (owner only), atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.name != "nt":
        os.chmod(path, 0o600)


def open_bare_backend(settings: RepositorySettings, clock: Clock, *, create: bool = False) -> Backend:
    from rempart.storage.factory import open_backend

    token = read_token(settings) if is_vault(settings.url) else None
    return open_backend(settings.url, create=create, clock=clock, vault_token=token,
                        vault_ca=settings.ca_file, vault_pin=settings.pin or None)


def wrap(backend: Backend, upload_kbps: float, attempts: int = 6) -> Backend:
    if upload_kbps > 0:
        backend = LimitedBackend(backend, upload_bps=upload_kbps * 1000)
    return RetryBackend(backend, attempts=attempts)


def open_repository(config: AgentConfig, clock: Clock) -> Repository:
    bare = open_bare_backend(config.repository, clock)
    return Repository.open(wrap(bare, config.limits.upload_kbps, config.repository.attempts))


class VaultReporter:
    """Run reports and status through the vault client; one short-lived connection per use."""

    def __init__(self, settings: RepositorySettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    def _client(self) -> Any:
        from rempart.storage.vaultclient import VaultBackend

        s = self.settings
        return VaultBackend(s.url, token=read_token(s), ca=s.ca_file, pin=s.pin or None, timeout=20.0)

    def report_run(self, outcome: str, error_class: str | None, counts: dict[str, int]) -> None:
        c = self._client()
        try:
            c.report_run(outcome, error_class=error_class, counts=counts)
        finally:
            c.close()

    def status(self) -> dict[str, Any]:
        c = self._client()
        try:
            out: dict[str, Any] = c.status()
            return out
        finally:
            c.close()


def reporter_for(config: AgentConfig, clock: Clock) -> VaultReporter | None:
    return VaultReporter(config.repository, clock) if is_vault(config.repository.url) else None

"""Create a repository: key pair, id key, recovery kit file, config, and this machine's agent key.

Shared by ``rempart init`` (any location) and ``rempart enroll`` (a vault).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rempart.agent.credentials import AgentCredential, save_credential
from rempart.core.clock import Clock, to_iso
from rempart.core.errors import AlreadyExists, LocalError, NotFound, RempartError, UserError, local_error
from rempart.crypto.keys import IdKey, RecoveryPrivateKey
from rempart.crypto.kit import RecoveryKit, encrypt_kit, to_printable
from rempart.repository.config import CONFIG, DEFAULT_PACK_SIZE, new_config
from rempart.storage.base import Backend


@dataclass(frozen=True)
class CreatedRepository:
    repo_id: str
    kit_path: Path


def check_kit_target(kit_path: Path) -> None:
    if kit_path.exists():
        raise UserError(f"{kit_path} exists already; refusing to overwrite a recovery kit")
    if not kit_path.parent.is_dir():
        raise UserError(f"folder {kit_path.parent} does not exist (for the recovery kit)")


def create_repository(
    backend: Backend,
    state_dir: Path,
    kit_path: Path,
    passphrase: str,
    clock: Clock,
    *,
    kdf: dict[str, object] | None = None,
    printable: Path | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
) -> CreatedRepository:
    """Write the kit first (a repository without its kit would be unreadable), then the config
    (create-only: an existing repository is never replaced), then the agent key."""
    check_kit_target(kit_path)
    # reach the storage before anything is written (its address, certificate pin, token): a
    # mistake there then leaves no recovery kit behind to be removed by hand
    try:
        backend.stat(CONFIG)
    except NotFound:
        pass
    else:
        raise _exists()
    private, id_key = RecoveryPrivateKey.generate(), IdKey.generate()
    config = new_config(to_iso(clock.now()), private, id_key, pack_size=pack_size)
    kit_bytes = encrypt_kit(RecoveryKit(config.id, private, id_key), passphrase, kdf)
    _write_new(kit_path, kit_bytes, "recovery kit")
    if printable is not None:
        try:
            _write_new(printable, to_printable(kit_bytes).encode("utf-8"), "printable recovery kit")
        except LocalError:
            kit_path.unlink()
            raise
    data = config.to_bytes()
    try:
        backend.save(CONFIG, data)
    except AlreadyExists:
        if not _is_ours(backend, data):
            kit_path.unlink()
            if printable is not None:
                printable.unlink(missing_ok=True)
            raise _exists() from None
    except RempartError as exc:
        # the config may or may not have been stored (a dropped connection): keep the kit
        if not _is_ours(backend, data):
            exc.hint = (exc.hint + "; " if exc.hint else "") + f"the recovery kit {kit_path} is not used yet; remove it before retrying"
            raise
    save_credential(state_dir, AgentCredential(config.id, private.public, id_key))
    return CreatedRepository(config.id, kit_path)


def _exists() -> UserError:
    return UserError("a repository exists at this location already",
                     hint="to add this machine to it, use `rempart key add-agent --kit FILE`")


def _write_new(path: Path, data: bytes, what: str) -> None:
    """Create ``path`` (never replacing a file) with ``data``, synced; on failure (a full disk,
    a read-only folder) nothing is left behind, so that the command can simply be run again."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    except FileExistsError:
        raise UserError(f"{path} exists already; refusing to overwrite a recovery kit") from None
    except OSError as exc:
        raise local_error(f"{what} {path}", exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise local_error(f"{what} {path}", exc) from exc


def _is_ours(backend: Backend, data: bytes) -> bool:
    """Whether the stored config is byte for byte the one we tried to write (a retried save)."""
    try:
        return backend.load(CONFIG) == data
    except RempartError:
        return False

"""The single exception tree of Rempart.

Every error raised on purpose by Rempart derives from :class:`RempartError`. Third-party
exceptions (OSError, botocore, httpx, sqlite3 ...) are translated at the edges into the most
specific class below, with ``raise ... from exc``. Each class carries an ``exit_code`` used by the
CLI and a kebab-case ``reference`` that appears in JSON output and the docs.

    RempartError                      exit 1
    ├── UserError                     exit 2   bad flags, bad config, bad input from a person
    │   ├── ConfigError
    │   └── HostilePathError                   a name that would escape the restore target
    ├── BackendError                  exit 1   anything a storage backend refuses
    │   ├── NotFound
    │   ├── AlreadyExists                      create-only storage: the name is taken
    │   ├── PermissionDenied                   the credential lacks the permission letter
    │   ├── QuotaExceeded
    │   ├── StorageFull                        ENOSPC / 507
    │   ├── AuthenticationError                bad, expired or revoked token
    │   ├── MissingBlobs                       a snapshot references blobs storage lacks
    │   └── TransientError                     retry may help (network, 5xx, timeouts)
    ├── RepositoryError               exit 1
    │   ├── RepositoryNotFound        exit 10
    │   ├── NotEnrolledError          exit 10  this machine has no agent key for the repository
    │   ├── LockedError               exit 11
    │   └── IntegrityError            exit 20  corrupt, truncated or tampered data
    ├── CryptoError                   exit 1
    │   ├── WrongPassphrase           exit 12
    │   └── DecryptionError           exit 20  authentication tag mismatch
    ├── SourceError                   exit 3   a source file or database could not be read
    ├── LocalError                    exit 1   this machine's own files: the state folder, a
    │                                          restore target, a recovery kit (full, read-only...)
    └── SuspiciousBackup              exit 30  detection raised an alert for this backup

Messages never contain secrets (passphrases, tokens, keys).
"""

from __future__ import annotations

import errno


class RempartError(Exception):
    """Base class of every Rempart error."""

    exit_code: int = 1
    reference: str = "rempart-error"

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.reference, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class UserError(RempartError):
    """The command or its input is not valid."""

    exit_code = 2
    reference = "user-error"


class ConfigError(UserError):
    """The configuration is not valid."""

    reference = "config-error"


class HostilePathError(UserError):
    """A path would escape the target directory."""

    reference = "hostile-path"


class BackendError(RempartError):
    """The storage backend refused or failed an operation."""

    reference = "backend-error"


class NotFound(BackendError):
    """The object does not exist."""

    reference = "not-found"


class AlreadyExists(BackendError):
    """The object exists already and storage is create-only."""

    reference = "already-exists"


class PermissionDenied(BackendError):
    """The credential does not allow this operation."""

    reference = "permission-denied"


class QuotaExceeded(BackendError):
    """The practice's storage quota is exhausted."""

    reference = "quota-exceeded"


class StorageFull(BackendError):
    """The storage device is full."""

    reference = "storage-full"


class AuthenticationError(BackendError):
    """The token is missing, wrong, expired or revoked."""

    reference = "authentication-failed"


class MissingBlobs(BackendError):
    """The snapshot references blobs that the storage does not hold."""

    reference = "missing-blobs"

    def __init__(self, message: str = "", *, missing: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.missing = list(missing or [])


class TransientError(BackendError):
    """A temporary failure; retrying may succeed."""

    reference = "transient-error"


class RepositoryError(RempartError):
    """The repository cannot be used."""

    reference = "repository-error"


class RepositoryNotFound(RepositoryError):
    """No repository exists at this location."""

    exit_code = 10
    reference = "repository-not-found"


class NotEnrolledError(RepositoryError):
    """This machine holds no agent key for the repository."""

    exit_code = 10
    reference = "not-enrolled"


class LockedError(RepositoryError):
    """The repository or state is locked by another process."""

    exit_code = 11
    reference = "locked"


class IntegrityError(RepositoryError):
    """Stored data is corrupt, truncated or was tampered with."""

    exit_code = 20
    reference = "integrity-error"


class CryptoError(RempartError):
    """A cryptographic operation failed."""

    reference = "crypto-error"


class WrongPassphrase(CryptoError):
    """The recovery kit passphrase is wrong."""

    exit_code = 12
    reference = "wrong-passphrase"


class DecryptionError(CryptoError):
    """Authenticated decryption failed: wrong key or tampered data."""

    exit_code = 20
    reference = "decryption-failed"


class SourceError(RempartError):
    """A source could not be read consistently."""

    exit_code = 3
    reference = "source-error"


class SuspiciousBackup(RempartError):
    """Ransomware detection raised an alert for this backup."""

    exit_code = 30
    reference = "suspicious-backup"


class LocalError(RempartError):
    """A file or folder on this machine that Rempart itself writes cannot be used."""

    exit_code = 1
    reference = "local-error"


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def local_error(what: str, exc: BaseException) -> LocalError:
    """``exc`` (an ``OSError``, or a ``sqlite3.Error`` of a local database) met while using
    ``what``, as one sentence a person can act on (the caller raises it ``from exc``)."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    code = getattr(exc, "errno", None)
    if code in _FULL or name.startswith("SQLITE_FULL"):
        return LocalError(f"{what}: no space left on the device", hint="free some space there, then run again")
    if code in _DENIED or name.startswith(("SQLITE_READONLY", "SQLITE_PERM")):
        return LocalError(f"{what}: not allowed to write there (permissions or a read-only file system)")
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return LocalError(f"{what}: {detail}")


def is_damaged_database(exc: BaseException) -> bool:
    """Whether a ``sqlite3.Error`` says the file is not, or no longer, a sound database."""
    return str(getattr(exc, "sqlite_errorname", "")).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))

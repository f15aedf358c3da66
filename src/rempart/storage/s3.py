"""S3-compatible object storage backend (boto3), with optional Object Lock retention.

Keys are ``<prefix>/<type>/<name>`` (``<prefix>/config`` for the config file); the prefix may be
empty. botocore errors are translated at this edge by :func:`map_s3_errors`.

**Create-only on S3.** Plain S3 has no portable atomic "create if absent". ``save`` therefore
does two things: it first asks ``HEAD`` (a cheap, clear ``AlreadyExists`` in the common case)
and then sends the ``PUT`` with ``If-None-Match: *`` (conditional write, supported by AWS since
2024 and by SeaweedFS; tested against it), which makes the server refuse the write with 412
when the key appeared between the two requests. On a store that ignores the header, two racing
writers could both succeed; with versioning and Object Lock the loser's bytes only add a
version and the first version stays intact and locked, and the vault addresses
content-addressed names, so both writers carry identical bytes anyway.

**Retention.** With ``object_lock_days`` set, every ``PUT`` carries ``ObjectLockMode`` and
``ObjectLockRetainUntilDate = clock.now() + days`` (the injected clock, never the OS). The bucket
must have Object Lock enabled (``create=True`` creates it so). In COMPLIANCE mode nobody,
including the bucket owner, can delete the version or shorten its retention before that date;
:meth:`S3Backend.remove` then raises ``PermissionDenied`` because the *storage* refuses.
:meth:`S3Backend.extend_retention` lets the vault's GC push the date of still-referenced packs.

**Reads address the accepted version.** A credential with plain ``s3:PutObject``/``DeleteObject``
(a stolen one; not this code) can add a newer version, or a delete marker, over a locked key.
The store never writes a key twice (create-only, content-addressed names), so the version it
wrote is the key's oldest: :meth:`load`, :meth:`stat` and retention extensions address that
version by id (remembered from the ``PUT``, else found with one ``ListObjectVersions`` per key,
remembered for the next :data:`S3Backend.VERSION_CACHE` keys). Newer versions and delete
markers are ignored: restores read what was accepted, GC extends the lock of what was accepted,
and :meth:`list` reads the version list (a delete marker hides no object from it, and the size
listed is the accepted version's). On a bucket without versioning there is one version and
nothing changes.

Retries: botocore's own retries are switched off; wrap the backend in ``RetryBackend``, which
retries the ``TransientError`` raised here.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rempart.core.clock import Clock
from rempart.core.errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    ConfigError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TransientError,
)
from rempart.core.ids import is_hex_id
from rempart.storage.base import BackendProperties, FileInfo, FileType, Handle

LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket. Built at the edge; credentials never in a URL."""

    endpoint: str
    bucket: str
    prefix: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    region: str = "us-east-1"
    object_lock_days: int | None = None
    lock_mode: str = "COMPLIANCE"
    connections: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"S3 endpoint must start with http:// or https://, got {self.endpoint[:80]!r}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.bucket):
            raise ConfigError(f"invalid S3 bucket name {self.bucket[:80]!r}")
        if self.prefix and (not _PREFIX_RE.match(self.prefix) or ".." in self.prefix.split("/")):
            raise ConfigError(f"invalid S3 prefix {self.prefix[:80]!r} (no leading/trailing '/', no '..')")
        if self.lock_mode not in LOCK_MODES:
            raise ConfigError(f"lock_mode must be one of {', '.join(LOCK_MODES)}")
        if self.object_lock_days is not None and self.object_lock_days < 1:
            raise ConfigError("object_lock_days must be at least 1 (or None for no lock)")

    @property
    def location(self) -> str:
        """Printable location (no credential)."""
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchVersion", "NoSuchBucket"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
         "TokenRefreshRequired", "MissingSecurityHeader"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict", "BucketAlreadyExists"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
              "ServiceUnavailable", "503", "500", "502", "504"}
_QUOTA = {"QuotaExceeded", "TooManyBuckets", "InsufficientStorage", "507"}


_WHY: dict[type[BackendError], str] = {
    NotFound: "not found",
    AuthenticationError: "the S3 credential was refused",
    PermissionDenied: "refused by the object storage",
    AlreadyExists: "already exists",
    QuotaExceeded: "storage quota exceeded",
    TransientError: "temporary S3 failure",
}


def _by_code(code: str) -> type[BackendError] | None:
    for codes, cls in ((_NOT_FOUND, NotFound), (_AUTH, AuthenticationError), (_QUOTA, QuotaExceeded),
                       (_EXISTS, AlreadyExists), (_TRANSIENT, TransientError), (_DENIED, PermissionDenied)):
        if code in codes:
            return cls
    return None


def _by_status(status: int) -> type[BackendError] | None:
    if status == 404:
        return NotFound
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDenied
    if status == 412:
        return AlreadyExists
    if status == 507:
        return QuotaExceeded
    if status >= 500 or status == 429:
        return TransientError
    return None


def _error_code(exc: Any) -> tuple[str, int]:
    resp = getattr(exc, "response", {}) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


@contextlib.contextmanager
def map_s3_errors(what: str) -> Iterator[None]:
    """Translate botocore exceptions into the Rempart tree (messages carry no credential)."""
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        code, status = _error_code(exc)
        tag = f"{code or 'error'} (HTTP {status})"
        if code == "NoSuchBucket":
            raise NotFound(f"{what}: bucket does not exist") from exc
        if code == "RequestTimeTooSkewed":
            raise BackendError(f"{what}: this computer's clock is too far from the storage's: {tag}") from exc
        cls = _by_code(code) or _by_status(status)
        if cls is not None:
            raise cls(f"{what}: {_WHY[cls]}: {tag}") from exc
        raise BackendError(f"{what}: S3 error {tag}") from exc
    except (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError,
            bx.ResponseStreamingError) as exc:
        raise TransientError(f"{what}: S3 connection failed: {type(exc).__name__}") from exc
    except bx.NoCredentialsError as exc:
        raise AuthenticationError(f"{what}: no S3 credential configured") from exc
    except bx.BotoCoreError as exc:
        raise BackendError(f"{what}: S3 client error: {type(exc).__name__}") from exc


def _oldest(versions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first stored of one key's versions, as listed by ``ListObjectVersions``: S3 lists a
    key's versions in the order they were stored, newest first, so it is the last one listed.
    ``LastModified`` is no guide: it has one-second resolution, and SeaweedFS moves it forward
    when a version's retention is extended (seen here), which would make the accepted version
    look newer than one a stolen credential put over it."""
    return versions[-1]


class S3Backend:
    #: objects per LIST request (S3's maximum is 1000)
    list_page_size = 1000
    #: keys whose accepted version id is remembered
    VERSION_CACHE = 100_000

    def __init__(self, config: S3Config, *, clock: Clock | None = None, create: bool = False,
                 client: Any = None) -> None:
        if config.object_lock_days is not None and clock is None:
            raise ConfigError("an S3 backend with Object Lock needs a clock to compute retention dates")
        self.config = config
        self._clock = clock
        self.properties = BackendProperties(
            connections=config.connections,
            retention=config.object_lock_days is not None,
            location=config.location,
        )
        self._s3 = client or self._make_client(config)
        self._versions: OrderedDict[str, str] = OrderedDict()  # key -> accepted version ("": unversioned)
        self._versions_lock = threading.Lock()
        if create:
            self._create_bucket()

    @staticmethod
    def _make_client(c: S3Config) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=c.endpoint,
            region_name=c.region,
            aws_access_key_id=c.access_key or None,
            aws_secret_access_key=c.secret_key or None,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},  # RetryBackend retries, once, above us
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                max_pool_connections=max(10, c.connections),
            ),
        )

    def _create_bucket(self) -> None:
        b = self.config.bucket
        locking = self.config.object_lock_days is not None
        with map_s3_errors(f"create bucket {b}"):
            try:
                kw: dict[str, Any] = {"Bucket": b}
                if locking:
                    kw["ObjectLockEnabledForBucket"] = True
                self._s3.create_bucket(**kw)
            except Exception as exc:
                if _error_code(exc)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            if locking:
                try:
                    cfg = self._s3.get_object_lock_configuration(Bucket=b)
                except Exception as exc:
                    if _error_code(exc)[0] not in ("ObjectLockConfigurationNotFoundError",
                                                   "NoSuchObjectLockConfiguration"):
                        raise
                    cfg = {}
                if cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
                    raise ConfigError(f"bucket {b} exists without Object Lock; retention cannot be enforced")

    # --- keys ---------------------------------------------------------------------------

    def _key(self, h: Handle) -> str:
        p = f"{self.config.prefix}/" if self.config.prefix else ""
        if h.type is FileType.CONFIG:
            return f"{p}config"
        return f"{p}{h.type.value}/{h.name}"

    def _head(self, key: str) -> dict[str, Any]:
        out: dict[str, Any] = self._s3.head_object(Bucket=self.config.bucket, Key=key)
        return out

    def _remember(self, key: str, version: str | None) -> None:
        with self._versions_lock:
            self._versions[key] = "" if version in (None, "null") else str(version)
            self._versions.move_to_end(key)
            while len(self._versions) > self.VERSION_CACHE:
                self._versions.popitem(last=False)

    def _accepted(self, key: str) -> dict[str, Any]:
        """``VersionId`` of the version this store wrote (the key's oldest), as request keyword
        arguments: empty on an unversioned bucket. NotFound if the key has no version (delete
        markers do not count). Call inside :func:`map_s3_errors`."""
        with self._versions_lock:
            known = self._versions.get(key)
        if known is None:
            versions: list[dict[str, Any]] = []
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=self.config.bucket, Prefix=key)
            for page in pages:
                versions += [v for v in page.get("Versions", []) if v["Key"] == key]
            if not versions:
                raise NotFound(f"{key}: no such object")
            vid = _oldest(versions).get("VersionId")
            self._remember(key, vid)
            known = "" if vid in (None, "null") else str(vid)
        return {"VersionId": known} if known else {}

    def _forget(self, key: str) -> None:
        with self._versions_lock:
            self._versions.pop(key, None)

    # --- protocol -----------------------------------------------------------------------

    def save(self, h: Handle, data: bytes) -> None:
        key = self._key(h)
        kw: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key, "Body": bytes(data),
                              "IfNoneMatch": "*"}
        if self.config.object_lock_days is not None:
            assert self._clock is not None
            kw["ObjectLockMode"] = self.config.lock_mode
            kw["ObjectLockRetainUntilDate"] = self._clock.now() + timedelta(days=self.config.object_lock_days)
        with map_s3_errors(f"save {h}"):
            try:
                self._head(key)
            except Exception as exc:
                if _error_code(exc)[1] != 404:
                    raise
            else:
                raise AlreadyExists(f"save {h}: already exists")
            resp = self._s3.put_object(**kw)
        self._remember(key, resp.get("VersionId") if isinstance(resp, dict) else None)

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        key = self._key(h)
        if length == 0:
            self.stat(h)
            return b""
        rng = f"bytes={offset}-" if length is None else f"bytes={offset}-{offset + length - 1}"
        with map_s3_errors(f"load {h}"):
            try:
                kw: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key, **self._accepted(key)}
                if offset or length is not None:
                    kw["Range"] = rng
                resp = self._s3.get_object(**kw)
            except Exception as exc:
                if _error_code(exc)[0] != "InvalidRange":
                    raise
                if length is None:  # offset at or past the end: nothing left, like a file
                    return b""
                raise IntegrityError(f"load {h}: short read (range {offset}+{length} beyond the end)") from exc
            data: bytes = resp["Body"].read()
        if length is not None and len(data) != length:
            raise IntegrityError(f"load {h}: short read ({len(data)} of {length} bytes)")
        return data

    def stat(self, h: Handle) -> FileInfo:
        key = self._key(h)
        with map_s3_errors(f"stat {h}"):
            head = self._s3.head_object(Bucket=self.config.bucket, Key=key, **self._accepted(key))
        return FileInfo(h.name, int(head["ContentLength"]))

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        if ftype is FileType.CONFIG:
            try:
                yield self.stat(Handle(FileType.CONFIG, "config"))
            except NotFound:
                pass
            return
        # the version list, not the key list: a key whose latest version is a delete marker put
        # there by someone else still holds the version this store wrote (see the module docstring)
        prefix = self._key(Handle(ftype, "0" * 64))[:-64]
        with map_s3_errors(f"list {ftype.value}"):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.config.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size})
            key = ""
            versions: list[dict[str, Any]] = []  # one key's, which may span two pages
            for page in pages:
                for v in page.get("Versions", []):
                    if v["Key"] != key:
                        yield from self._listed(key, versions, prefix)
                        key, versions = v["Key"], []
                    versions.append(v)
            yield from self._listed(key, versions, prefix)

    def _listed(self, key: str, versions: Sequence[dict[str, Any]], prefix: str) -> Iterator[FileInfo]:
        name = key[len(prefix):]
        if versions and is_hex_id(name):
            oldest = _oldest(versions)
            self._remember(key, oldest.get("VersionId"))
            yield FileInfo(name, int(oldest["Size"]))

    def remove(self, h: Handle) -> None:
        """Delete the object for real: every version of its key, not just a delete marker.

        Under Object Lock the storage refuses while retention runs: ``PermissionDenied``.
        """
        key, bucket = self._key(h), self.config.bucket
        self._forget(key)
        with map_s3_errors(f"remove {h}"):
            version = self._head(key).get("VersionId")
            if version in (None, "", "null"):
                self._s3.delete_object(Bucket=bucket, Key=key)
                return
            ids: list[str] = []
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if v["Key"] == key:
                        ids.append(v["VersionId"])
            for vid in ids or [version]:
                try:
                    self._s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)
                except Exception as exc:
                    if _error_code(exc)[0] in _DENIED or _error_code(exc)[1] == 403:
                        raise PermissionDenied(
                            f"remove {h}: the object storage refused to delete a version; it is "
                            "probably still under Object Lock retention"
                        ) from exc
                    raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._s3.close()

    # --- retention ------------------------------------------------------------------------

    def retention(self, h: Handle) -> tuple[str, datetime] | None:
        """(mode, retain-until) of the accepted version, or None if it carries no retention."""
        key = self._key(h)
        with map_s3_errors(f"retention of {h}"):
            try:
                r = self._s3.get_object_retention(Bucket=self.config.bucket, Key=key, **self._accepted(key))
            except Exception as exc:
                code = _error_code(exc)[0]
                if code in ("NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"):
                    return None
                raise
        ret = r.get("Retention") or {}
        if not ret.get("RetainUntilDate"):
            return None
        return str(ret.get("Mode")), ret["RetainUntilDate"]

    def extend_retention(self, h: Handle, until: datetime) -> None:
        """Make the current version retained at least until ``until`` (never shortens).

        A no-op when it is already retained that long; the storage refuses shortening anyway.
        """
        if until.tzinfo is None:
            raise ValueError("until must be an aware datetime")
        current = self.retention(h)
        if current is not None and current[1] >= until:
            return
        key = self._key(h)
        with map_s3_errors(f"extend retention of {h}"):
            kw: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key, **self._accepted(key),
                                  "Retention": {"Mode": self.config.lock_mode, "RetainUntilDate": until}}
            self._s3.put_object_retention(**kw)

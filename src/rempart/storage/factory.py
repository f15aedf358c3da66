"""Open a backend from a repository location string.

* a plain path or ``file:///path`` → :class:`LocalBackend`;
* ``s3://BUCKET[/PREFIX]`` → :class:`S3Backend` built from the :class:`S3Config` the caller
  passes (endpoint, credentials, lock policy); the URL only names bucket and prefix, which must
  match the config — credentials never travel in a URL or on a command line;
* ``https://HOST:PORT/PRACTICE`` → the vault client backend
  (``rempart.storage.vaultclient.VaultBackend``), imported lazily; the token (and the CA file
  or certificate pin) come from the caller (environment or token file, read at the edge).

The result is the bare backend: callers add ``RetryBackend`` / ``LimitedBackend`` around it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from rempart.core.clock import Clock
from rempart.core.errors import ConfigError, RepositoryNotFound, UserError
from rempart.storage.base import Backend
from rempart.storage.local import LocalBackend
from rempart.storage.s3 import S3Config


def open_backend(
    location: str,
    *,
    create: bool = False,
    s3: S3Config | None = None,
    clock: Clock | None = None,
    vault_token: str | None = None,
    vault_ca: str | Path | None = None,
    vault_pin: str | None = None,
) -> Backend:
    if not location:
        raise UserError("empty repository location")
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme in ("", "file"):
        return _local(location, scheme, create)
    if scheme == "s3":
        return _s3(location, s3, clock, create)
    if scheme == "https":
        if not vault_token:
            raise ConfigError("a vault repository needs a token", hint="set REMPART_VAULT_TOKEN or use a token file")
        from rempart.storage.vaultclient import VaultBackend  # type: ignore[import-not-found,unused-ignore]

        backend: Backend = VaultBackend(location, token=vault_token, ca=vault_ca, pin=vault_pin)
        return backend
    if scheme == "http":
        raise UserError("plain http:// is refused for a vault; use https://HOST:PORT/PRACTICE")
    raise UserError(f"unknown repository location scheme {scheme[:20]!r}://",
                    hint="use a path, file:///path, s3://bucket/prefix or https://host:port/practice")


def _local(location: str, scheme: str, create: bool) -> LocalBackend:
    if scheme == "file":
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise UserError(f"file:// URLs must be local, got host {parts.netloc[:80]!r}")
        path = Path(unquote(parts.path))
    else:
        path = Path(location).expanduser()
    if not create and not path.is_dir():
        raise RepositoryNotFound(f"no repository at {path}")
    return LocalBackend(path, create=create)


def _s3(location: str, cfg: S3Config | None, clock: Clock | None, create: bool) -> Backend:
    from rempart.storage.s3 import S3Backend

    if cfg is None:
        raise ConfigError(f"{location}: S3 needs a configuration (endpoint and credentials)",
                          hint="give them in the configuration file, never in the URL")
    parts = urlsplit(location)
    if parts.username or parts.password or "@" in parts.netloc:
        raise UserError("credentials are not accepted in an s3:// URL; put them in the configuration file")
    prefix = parts.path.strip("/")
    if parts.netloc != cfg.bucket or prefix != cfg.prefix:
        raise ConfigError(f"{location} does not match the configured bucket/prefix {cfg.bucket}/{cfg.prefix}")
    return S3Backend(cfg, clock=clock, create=create)

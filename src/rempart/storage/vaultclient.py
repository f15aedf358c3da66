"""Client backend for a Rempart vault: the storage protocol over HTTPS.

``VaultBackend("https://HOST:PORT/PRACTICE", token=..., ca=... | pin=...)`` behaves like any
other backend, so ``rempart backup``/``restore`` work against a vault unchanged. The token is
given by the caller (the CLI reads ``REMPART_VAULT_TOKEN`` or a token file); this module never
reads the environment.

TLS: ``ca`` is a CA file; ``pin`` is the SHA-256 fingerprint of the vault's certificate (what
``rempart vault serve`` prints). With a pin, the certificate is fetched once, compared with the
pin, and then used as the only trust anchor, so every later connection is verified against that
exact certificate before the token is sent. For convenience ``ca`` may itself be a pin
(``sha256:<hex>`` or 64 hex digits with or without colons).

Every request of a backend goes through keep-alive ``http.client`` connections (a CLI process
never imports httpx: ~0.2 s of CPU per ``rempart backup``/``restore`` on the benchmark machine);
httpx serves only the one-off ``enroll`` and ``whoami`` calls.

Errors are translated at this edge: 401 AuthenticationError, 403 PermissionDenied, 404 NotFound,
409 AlreadyExists / MissingBlobs(missing=...), 413/400/422 UserError or IntegrityError,
507 QuotaExceeded / StorageFull, 429/5xx/connection problems TransientError (retried here with
exponential backoff and full jitter; uploads are idempotent, so a retry after a dropped
connection completes without duplication).
"""

from __future__ import annotations

import http.client
import json
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rempart.core import errors as E
from rempart.storage.base import BackendProperties, FileInfo, FileType, Handle
from rempart.storage.vaulthttp import Connections, Reply, looks_like_pin, tls_context, translate

_PRACTICE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
class VaultBackend:
    def __init__(self, url: str, *, token: str, ca: str | Path | None = None, pin: str | None = None,
                 timeout: float = 120.0, attempts: int = 2, base_delay: float = 0.5, max_delay: float = 30.0,
                 connections: int = 4, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a ready TLS context (then ``ca`` and ``pin`` are not used: see
        :meth:`from_settings`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise E.UserError("a vault location reads https://HOST:PORT/PRACTICE")
        if parts.username or parts.password:
            raise E.UserError("credentials are not accepted in a vault URL; use REMPART_VAULT_TOKEN")
        practice = parts.path.strip("/")
        if not _PRACTICE.match(practice):
            raise E.UserError(f"the vault URL must end with the practice name, got {practice[:70]!r}")
        if not token:
            raise E.ConfigError("a vault token is needed", hint="set REMPART_VAULT_TOKEN or a token file")
        if ca is not None and pin is None and looks_like_pin(str(ca)) and not Path(str(ca)).exists():
            ca, pin = None, str(ca)
        self.practice = practice
        self.base = f"{parts.scheme}://{parts.netloc}"
        self._prefix = f"/v1/p/{practice}"
        self.properties = BackendProperties(connections=connections, location=f"{self.base}/{practice}")
        self._attempts, self._base_delay, self._max_delay = attempts, base_delay, max_delay
        self._url, self._timeout, self._connections = url, timeout, connections
        self.requests = 0
        self._sleep = sleep
        self._rng = rng or random.Random()
        verify: Any = True
        if parts.scheme == "https":
            port = parts.port or 443
            verify = tls or self._retry(lambda: tls_context(parts.hostname or "", port, ca=ca, pin=pin))
        self._tls = verify if isinstance(verify, ssl.SSLContext) else None
        self._token = token
        #: sent with every request (the token: never logged, never in an error message)
        self.headers = {"Authorization": f"Bearer {token}", "User-Agent": "rempart-vaultclient"}
        self._bulk = Connections(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                      verify if isinstance(verify, ssl.SSLContext) else None, self.headers, timeout,
                                      connections * 2)  # restore workers + read-ahead: no TLS handshake churn

    def settings(self) -> dict[str, Any]:
        """Plain values from which :meth:`from_settings` builds the same client in another
        process (a restore process): the URL, the token, the trusted certificates (DER, as
        loaded: the pinned certificate itself, so the pin is not fetched again) and the timeouts.
        Holds the token: give it down a pipe, never on a command line or in an environment."""
        ctx = self._tls
        return {"url": self._url, "token": self._token, "timeout": self._timeout,
                "attempts": self._attempts, "base_delay": self._base_delay, "max_delay": self._max_delay,
                "connections": self._connections,
                "cas": b"".join(ctx.get_ca_certs(binary_form=True)) if ctx is not None else b"",
                "check_hostname": bool(ctx.check_hostname) if ctx is not None else True,
                "verify_flags": int(ctx.verify_flags) if ctx is not None else 0}

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> VaultBackend:
        """The client :meth:`settings` describes (no network access until the first request)."""
        tls = None
        if str(s["url"]).startswith("https:"):
            cas = s.get("cas") or b""
            tls = ssl.create_default_context(cadata=cas) if cas else ssl.create_default_context()
            tls.check_hostname = bool(s.get("check_hostname", True))
            tls.verify_flags |= ssl.VerifyFlags(int(s.get("verify_flags", 0)))
        return cls(str(s["url"]), token=str(s["token"]), timeout=float(s["timeout"]), attempts=int(s["attempts"]),
                   base_delay=float(s["base_delay"]), max_delay=float(s["max_delay"]),
                   connections=int(s["connections"]), tls=tls)

    # --- plumbing -----------------------------------------------------------------------

    def _retry(self, fn: Callable[[], Any]) -> Any:
        for attempt in range(self._attempts):
            try:
                return fn()
            except E.TransientError as exc:
                if attempt == self._attempts - 1:
                    raise
                delay = min(self._max_delay, self._base_delay * 2**attempt)
                wait = getattr(exc, "retry_after", None)
                self._sleep(max(float(wait or 0), self._rng.uniform(0, delay)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, path: str, *, json_body: Any = None) -> Reply:
        headers = None
        body = None
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
        return Reply(*self._send_bulk(path, headers, method=method, content=body))

    def _send_bulk(self, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
                   content: Any = None, into: memoryview | None = None) -> tuple[int, dict[str, str], bytes]:
        self.requests += 1
        try:
            if into is not None:
                status, resp_headers, body = self._bulk.get_into(path, headers or {}, into)
            else:
                status, resp_headers, body = self._bulk.send(method, path, headers, content)
        except TimeoutError as exc:
            raise E.TransientError(f"vault: {method} timed out") from exc
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise E.AuthenticationError("vault: the TLS certificate could not be verified",
                                            hint="check the CA file or the certificate pin") from exc
            raise E.TransientError(f"vault: connection problem ({type(exc).__name__})") from exc
        if status >= 400:
            err = translate(Reply(status, resp_headers, body))
            if status == 429:
                ra = resp_headers.get("retry-after", "")
                err.retry_after = float(ra) if ra.isdigit() else None  # type: ignore[attr-defined]
            raise err
        return status, resp_headers, body

    def request(self, method: str, path: str, *, json: Any = None) -> Reply:
        """One request with retries; ``json``: a body sent as JSON. Raises the translated error."""
        return self._retry(lambda: self._send(method, path, json_body=json))  # type: ignore[no-any-return]

    def _path(self, h: Handle) -> str:
        if h.type is FileType.CONFIG:
            return f"{self._prefix}/config"
        self._check_type(h.type)
        return f"{self._prefix}/{h.type.value}/{h.name}"

    @staticmethod
    def _check_type(ftype: FileType) -> None:
        if ftype not in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.CONFIG):
            raise E.PermissionDenied(f"a vault stores no {ftype.value} files")

    # --- Backend protocol ---------------------------------------------------------------

    def save(self, h: Handle, data: bytes) -> None:
        # through the keep-alive http.client connections, the body sent as it is (a pack is a
        # memoryview of its recycled buffer: no 16 MiB bytes copy, no h11 per-event overhead)
        path = self._path(h)
        headers = {"Content-Type": "application/octet-stream"}
        try:
            self._retry(lambda: self._send_bulk(path, headers, method="POST", content=data))
        except E.AlreadyExists as exc:
            raise E.AlreadyExists(f"save {h}: already exists with other content") from exc

    def load(self, h: Handle, *, offset: int = 0, length: int | None = None) -> bytes:
        """The object, or ``length`` bytes of it from ``offset`` (one ranged GET: a restore asks
        for runs of neighbouring blobs, so no whole pack is fetched or kept)."""
        if offset < 0 or (length is not None and length < 0):
            raise E.UserError(f"load {h}: negative offset or length")
        if length == 0 or (offset and length is None):
            size = self.stat(h).size
            if offset > size:
                raise E.IntegrityError(f"load {h}: offset {offset} beyond the end ({size} bytes)")
            if length == 0 or offset == size:
                return b""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        path = self._path(h)
        try:
            status, resp_headers, data = self._retry(lambda: self._send_bulk(path, headers))
        except E.UserError as exc:
            if "range" in exc.message.lower():
                raise E.IntegrityError(f"load {h}: short read (range beyond the end)") from exc
            raise
        if headers and status != 206:
            raise E.IntegrityError(f"load {h}: the vault ignored the byte range (HTTP {status})")
        if headers and not resp_headers.get("content-range", "").startswith(f"bytes {offset}-"):
            raise E.IntegrityError(f"load {h}: the vault answered another byte range")
        if length is not None and len(data) != length:
            raise E.IntegrityError(f"load {h}: short read ({len(data)} of {length} bytes)")
        return data

    def load_into(self, h: Handle, offset: int, into: memoryview) -> None:
        """Fill ``into`` with ``len(into)`` bytes of the object from ``offset`` (one ranged GET
        read straight into the caller's buffer: a restore process reuses its buffers instead of
        a fresh ``bytes`` per run, whose pages the kernel must map and zero every time). The
        same checks as :meth:`load`: a 206 for exactly that range, else IntegrityError."""
        n = len(into)
        if offset < 0 or not n:
            raise E.UserError(f"load {h}: negative offset or empty range")
        headers = {"Range": f"bytes={offset}-{offset + n - 1}"}
        path = self._path(h)
        try:
            status, resp_headers, data = self._retry(lambda: self._send_bulk(path, headers, into=into))
        except E.UserError as exc:
            if "range" in exc.message.lower():
                raise E.IntegrityError(f"load {h}: short read (range beyond the end)") from exc
            raise
        if status != 206:
            raise E.IntegrityError(f"load {h}: the vault ignored the byte range (HTTP {status})")
        if not resp_headers.get("content-range", "").startswith(f"bytes {offset}-{offset + n - 1}/"):
            raise E.IntegrityError(f"load {h}: the vault answered another byte range")
        if data:
            raise E.IntegrityError(f"load {h}: short read ({len(data)} of {n} bytes)")

    def stat(self, h: Handle) -> FileInfo:
        resp = self.request("HEAD", self._path(h))
        return FileInfo(h.name, int(resp.headers.get("content-length", "0")))

    def list(self, ftype: FileType) -> Iterator[FileInfo]:
        self._check_type(ftype)
        if ftype is FileType.CONFIG:
            try:
                yield self.stat(Handle(FileType.CONFIG, "config"))
            except E.NotFound:
                pass
            return
        items = self.request("GET", f"{self._prefix}/{ftype.value}/").json()
        for it in items:
            yield FileInfo(str(it["name"]), int(it["size"]))

    def remove(self, h: Handle) -> None:
        self.request("DELETE", self._path(h))

    def close(self) -> None:
        self._bulk.close()

    # --- vault extras -------------------------------------------------------------------

    def exists(self, ids: Iterable[str | bytes]) -> set[str]:
        """Which blob ids the vault holds (and marks as recently used, so GC keeps them)."""
        hexes = [i.hex() if isinstance(i, bytes) else i for i in ids]
        out: set[str] = set()
        for k in range(0, len(hexes), 10_000):
            resp = self.request("POST", f"{self._prefix}/blobs/exists", json={"ids": hexes[k : k + 10_000]})
            out.update(resp.json()["present"])
        return out

    def report_run(self, outcome: str, *, error_class: str | None = None, counts: dict[str, int] | None = None) -> None:
        self.request("POST", f"{self._prefix}/runs",
                     json={"outcome": outcome, "error_class": error_class, "counts": counts or {}})

    def report_drill(self, outcome: str, *, snapshot: str | None = None, files: int | None = None,
                     nbytes: int | None = None, seconds: float | None = None, error_class: str | None = None) -> None:
        """Record a restore drill's outcome (a restore token's right, not a backup token's)."""
        self.request("POST", f"{self._prefix}/drills", json={
            "outcome": outcome, "snapshot": snapshot, "files": files, "bytes": nbytes, "seconds": seconds,
            "error_class": error_class})

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"{self._prefix}/status").json()
        return out

    def timeline(self) -> Any:
        out: Any = self.request("GET", f"{self._prefix}/timeline").json()
        return out


def _base_client(url: str, ca: str | Path | None, pin: str | None, token: str | None = None) -> Any:
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise E.UserError("a vault URL reads https://HOST:PORT")
    if ca is not None and pin is None and looks_like_pin(str(ca)) and not Path(str(ca)).exists():
        ca, pin = None, str(ca)
    verify: Any = True
    if parts.scheme == "https":
        verify = tls_context(parts.hostname, parts.port or 443, ca=ca, pin=pin)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{parts.scheme}://{parts.netloc}", verify=verify, timeout=30.0, headers=headers)


def enroll(url: str, code: str, *, ca: str | Path | None = None, pin: str | None = None) -> str:
    """Exchange a single-use enrollment code for a backup token (the practice comes with
    :func:`whoami`). Raises AuthenticationError whose message says wrong, expired or used."""
    import httpx

    with _base_client(url, ca, pin) as c:
        try:
            resp = c.post("/v1/enroll", json={"code": code})
        except httpx.TransportError as exc:
            raise E.TransientError(f"vault: connection problem ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            raise translate(resp)
        return str(resp.json()["token"])


def whoami(url: str, token: str, *, ca: str | Path | None = None, pin: str | None = None) -> dict[str, Any]:
    """The token's id, scope and practice, as the vault sees them."""
    import httpx

    with _base_client(url, ca, pin, token) as c:
        try:
            resp = c.get("/v1/whoami")
        except httpx.TransportError as exc:
            raise E.TransientError(f"vault: connection problem ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            raise translate(resp)
        out: dict[str, Any] = resp.json()
        return out

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
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rempart.core import errors as E
from rempart.storage.base import BackendProperties, FileInfo, FileType, Handle

_PRACTICE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_BY_REFERENCE: dict[str, type[E.RempartError]] = {
    "authentication-failed": E.AuthenticationError,
    "permission-denied": E.PermissionDenied,
    "not-found": E.NotFound,
    "already-exists": E.AlreadyExists,
    "quota-exceeded": E.QuotaExceeded,
    "storage-full": E.StorageFull,
    "integrity-error": E.IntegrityError,
    "transient-error": E.TransientError,
    "backend-error": E.TransientError,
}
_BY_STATUS: dict[int, type[E.RempartError]] = {
    401: E.AuthenticationError, 403: E.PermissionDenied, 404: E.NotFound, 409: E.AlreadyExists,
    413: E.UserError, 416: E.UserError, 422: E.UserError, 400: E.UserError, 507: E.QuotaExceeded,
}


def looks_like_pin(value: str) -> bool:
    v = value.strip().lower()
    v = v[len("sha256:"):] if v.startswith("sha256:") else v
    return bool(re.fullmatch(r"[0-9a-f]{64}", v.replace(":", "")))


def _norm_pin(pin: str) -> str:
    v = pin.strip().lower()
    v = v[len("sha256:"):] if v.startswith("sha256:") else v
    v = v.replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", v):
        raise E.ConfigError("a certificate pin is the SHA-256 fingerprint: 64 hex digits (colons allowed)")
    return v


def tls_context(host: str, port: int, *, ca: str | Path | None, pin: str | None, timeout: float = 10.0) -> ssl.SSLContext:
    if pin:
        import hashlib

        want = _norm_pin(pin)
        try:
            pem = ssl.get_server_certificate((host, port), timeout=timeout)
        except (OSError, ssl.SSLError) as exc:
            raise E.TransientError(f"cannot reach the vault at {host}:{port} ({type(exc).__name__})") from exc
        got = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        if got != want:
            raise E.AuthenticationError(
                "the vault's TLS certificate does not match the pinned fingerprint",
                hint="check the pin printed by 'rempart vault serve'; someone may be intercepting the connection",
            )
        ctx = ssl.create_default_context(cadata=pem)
        ctx.check_hostname = False  # the exact certificate is pinned
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx
    if ca:
        try:
            return ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise E.ConfigError(f"cannot load the vault CA file {ca}") from exc
    return ssl.create_default_context()


class Reply:
    """A response read whole: status, lower-case headers, body (what ``translate`` and the
    backend's JSON calls need; same names as httpx's)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, content

    def json(self) -> Any:
        return json.loads(self.content)


def translate(resp: Any) -> E.RempartError:
    """The exception for an error response (a :class:`Reply` or an ``httpx.Response``)."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    ref = str(body.get("error", ""))
    msg = str(body.get("message") or body.get("detail") or f"vault answered HTTP {resp.status_code}")[:500]
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    if ref == "missing-blobs":
        return E.MissingBlobs(msg, missing=[str(m) for m in body.get("missing", [])])
    if resp.status_code == 429 or (resp.status_code >= 500 and resp.status_code != 507):
        return E.TransientError(f"vault: {msg}")
    cls = _BY_REFERENCE.get(ref) or _BY_STATUS.get(resp.status_code, E.BackendError)
    if cls is E.UserError and ref == "" and resp.status_code == 422:
        msg = "the vault refused the request as invalid"
    return cls(f"vault: {msg}", hint=hint)


class _BulkConnections:
    """Keep-alive ``http.client`` connections for every request of a backend: reading a large
    body through them costs about a quarter of the client CPU of httpx/h11 (which handles every
    16 KiB TLS record as an event) and about half the wall time on loopback. TLS context: the CA
    or the pinned certificate. Thread-safe: each request takes an idle connection or opens one,
    so concurrent readers each have their own."""

    def __init__(self, scheme: str, host: str, port: int, ctx: ssl.SSLContext | None,
                 headers: dict[str, str], timeout: float, size: int) -> None:
        self.scheme, self.host, self.port, self.ctx = scheme, host, port, ctx
        self.headers, self.timeout, self.size = headers, timeout, max(1, size)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new()

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.send("GET", path, headers)

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: Any = None) -> tuple[int, dict[str, str], bytes]:
        """One request; ``body`` may be any bytes-like object (sent as it is, no copy)."""
        hdrs = {**self.headers, **headers} if headers else self.headers
        return self._exchange(method, path, hdrs, body, lambda resp: resp.read())

    def get_into(self, path: str, headers: dict[str, str], into: memoryview
                 ) -> tuple[int, dict[str, str], bytes]:
        """A GET whose body, when it is a 206 of exactly ``len(into)`` bytes, is read straight
        into ``into`` (returned body empty); any other answer's body is returned as usual."""

        def read(resp: http.client.HTTPResponse) -> bytes:
            if resp.status != 206 or resp.length != len(into):
                return resp.read()
            got = 0
            while got < len(into):
                n = resp.readinto(into[got:])
                if not n:
                    raise http.client.IncompleteRead(b"", len(into) - got)
                got += n
            return b""

        return self._exchange("GET", path, {**self.headers, **headers}, None, read)

    def _exchange(self, method: str, path: str, hdrs: dict[str, str], body: Any,
                  read: Callable[[http.client.HTTPResponse], bytes]) -> tuple[int, dict[str, str], bytes]:
        """Send one request and ``read`` its answer's body. A kept-alive connection the server
        closed meanwhile is retried once on a fresh one (the request never reached the vault:
        RemoteDisconnected before any answer)."""
        for fresh in (False, True):
            conn = self._take() if not fresh else self._new()
            reused = not fresh and conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = read(resp)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if not reused:
                    raise
            except BaseException:
                conn.close()
                raise
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        self._keep(conn, resp)
        return resp.status, resp_headers, data

    def _keep(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        kept = False
        if not resp.will_close:
            with self._lock:
                if len(self._idle) < self.size:
                    self._idle.append(conn)
                    kept = True
        if not kept:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


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
        self._bulk = _BulkConnections(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
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

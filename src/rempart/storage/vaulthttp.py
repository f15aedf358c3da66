"""The HTTP layer of the vault client: which certificate to trust (a CA file or a pinned
fingerprint), keep-alive ``http.client`` connections, and the translation of the vault's error
answers into rempart's exceptions.

TLS: ``ca`` is a CA file; ``pin`` is the SHA-256 fingerprint of the vault's certificate (what
``rempart vault serve`` prints). With a pin, the certificate is fetched once, compared with the
pin, and then used as the only trust anchor, so every later connection is verified against that
exact certificate before the token is sent.

Errors: 401 AuthenticationError, 403 PermissionDenied, 404 NotFound, 409 AlreadyExists /
MissingBlobs(missing=...), 413/400/422 UserError or IntegrityError, 507 QuotaExceeded /
StorageFull, 429/5xx TransientError.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rempart.core import errors as E

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


_WITHOUT_BODY = {401: "the vault token is wrong, expired or revoked",
                 403: "the vault does not allow this token to do that"}


def translate(resp: Any) -> E.RempartError:
    """The exception for an error response (a :class:`Reply` or an ``httpx.Response``)."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    ref = str(body.get("error", ""))
    # an answer without a body (HEAD) says only its status: say what that status means
    default = _WITHOUT_BODY.get(resp.status_code, f"vault answered HTTP {resp.status_code}")
    msg = str(body.get("message") or body.get("detail") or default)[:500]
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    if ref == "missing-blobs":
        return E.MissingBlobs(msg, missing=[str(m) for m in body.get("missing", [])])
    if resp.status_code == 429 or (resp.status_code >= 500 and resp.status_code != 507):
        return E.TransientError(f"vault: {msg}")
    cls = _BY_REFERENCE.get(ref) or _BY_STATUS.get(resp.status_code, E.BackendError)
    if cls is E.UserError and ref == "" and resp.status_code == 422:
        msg = "the vault refused the request as invalid"
    return cls(f"vault: {msg}", hint=hint)


class Connections:
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

"""Helpers for watch tests: plain-format objects (random bytes stand in for ciphertext: the vault
has no key and cannot tell), an in-process vault with a fake clock, and an SMTP test server
(aiosmtpd) with STARTTLS on a self-signed certificate and AUTH."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from rempart.core.clock import FakeClock
from rempart.repository.format import (
    ENVELOPE_LEN,
    BlobType,
    encode_header_body,
    encode_snapshot_prefix,
    pack_trailer,
)
from rempart.storage.base import FileType, Handle
from rempart.vault import practices as vp
from rempart.vault.app import create_app
from rempart.vault.config import parse_config
from rempart.vault.service import Vault
from rempart.vault.watch import settings as st
from rempart.vault.watch.service import WatchService


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pack_and_snapshot(verdict: str = "clean", *, files: int = 120, nbytes: int = 5_000_000,
                      findings: dict[str, int] | None = None) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    ids = [os.urandom(32) for _ in range(2)]
    sizes = [300, 500]
    body = encode_header_body(os.urandom(ENVELOPE_LEN), [(int(BlobType.DATA), i, n) for i, n in zip(ids, sizes)])
    pack = b"".join(os.urandom(n) for n in sizes) + pack_trailer(body + os.urandom(28))
    detection: dict[str, Any] = {"verdict": verdict, "score": 0.9 if verdict == "suspicious" else 0.0}
    detection.update(findings or {})
    plain = {"v": 1, "time": "2026-01-05T08:00:00Z", "tree": ids[0].hex(), "parent": None, "host": "h1",
             "stats": {"files": files, "dirs": 3, "bytes": nbytes, "files_new": 2, "files_changed": 5}, "detection": detection}
    snap = encode_snapshot_prefix(plain, ids, os.urandom(ENVELOPE_LEN)) + os.urandom(60)
    return (sha(pack), pack), (sha(snap), snap)


def backup(vault: Any, practice: str, verdict: str = "clean", **kw: Any) -> str:
    """Store one pack + snapshot for ``practice`` through the vault service (as the routes do)."""
    (pn, pd), (sn, sd) = pack_and_snapshot(verdict, **kw)
    p = vault.practice(practice)
    vault.ingest("token:test", p, Handle(FileType.DATA, pn), pd)
    vault.ingest("token:test", vault.practice(practice), Handle(FileType.SNAPSHOT, sn), sd)
    return sn


def self_signed(dirpath: Path, host: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    c, k = dirpath / "smtp-cert.pem", dirpath / "smtp-key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


@dataclass
class SmtpServer:
    host: str
    port: int
    cert: Path
    username: str
    password: str
    messages: list[Any] = field(default_factory=list)
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)
    tls_sessions: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    controller: Any = None

    def wait_for(self, pred: Any, timeout: float = 20.0) -> list[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: [m for m in self.messages if pred(m)], timeout=timeout)
        if not ok:
            subjects = [m["Subject"] for m in self.messages]
            raise AssertionError(f"no matching mail within {timeout}s; got {subjects}")
        return [m for m in self.messages if pred(m)]

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(dirpath: Path, port: int, username: str = "vault", password: str = "s3cret-smtp-pass") -> SmtpServer:
    """A real SMTP server: STARTTLS required before AUTH (LOGIN/PLAIN), messages kept in memory."""
    from email import message_from_bytes
    from email.policy import default as default_policy

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = self_signed(dirpath)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = SmtpServer("localhost", port, cert, username, password)

    class Handler:
        async def handle_DATA(self, smtp_server: Any, session: Any, envelope: Any) -> str:
            msg = message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
            msg["X-Test-Rcpt"] = ",".join(envelope.rcpt_tos)
            msg["X-Test-TLS"] = "yes" if session.ssl else "no"
            msg["X-Test-Auth"] = "yes" if session.authenticated else "no"
            with server.cond:
                server.messages.append(msg)
                server.cond.notify_all()
            return "250 OK"

        def handle_STARTTLS(self, smtp_server: Any, session: Any, envelope: Any) -> bool:
            server.tls_sessions += 1
            return True

    def authenticator(smtp_server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == username and \
            auth_data.password.decode() == password
        server.auth_attempts.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok))
        return AuthResult(success=ok, handled=False)

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                            auth_required=True, auth_require_tls=True, authenticator=authenticator)
    controller.start()
    server.host = "127.0.0.1"
    server.controller = controller
    return server


MONDAY_10H_PARIS = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass
class Env:
    app: FastAPI
    vault: Vault
    clock: FakeClock
    watch: WatchService

    def add(self, name: str, *, provider: str | None = "infogarde", contacts: tuple[str, ...] = ("dr@cabinet.test",),
            lang: str = "fr", quota: int | None = None, **overrides: Any) -> None:
        vp.add_practice(self.vault, name, actor="test", quota_bytes=quota)
        pid = self.vault.practice(name).id
        with self.vault.engine.begin() as conn:
            st.put(conn, pid, provider=provider, contacts=list(contacts), lang=lang, overrides=overrides or None)

    def provider(self, name: str, contacts: list[str], lang: str = "fr") -> None:
        with self.vault.engine.begin() as conn:
            st.put_provider(conn, name, contacts, lang)


def make_env(tmp_path: Path, smtp: SmtpServer | None = None, database_url: str = "", **watch: Any) -> Env:
    clock = FakeClock(MONDAY_10H_PARIS)
    w: dict[str, Any] = {"enabled": False, "every_seconds": 3600, "open_hours": "", "grace_seconds": 600,
                         "missing_after_seconds": 3 * 3600, "escalate_after_seconds": 2 * 3600,
                         "report_weekday": "off", "base_url": "https://vault.test:8443"}
    if smtp is not None:
        w["smtp"] = {"host": "127.0.0.1", "port": smtp.port, "username": smtp.username, "password": smtp.password,
                     "sender": "Rempart <vault@example.test>", "ca_file": str(smtp.cert), "timeout_seconds": 10}
    w.update(watch)
    raw_db = {"database": {"url": database_url}} if database_url else {}
    cfg = parse_config({**raw_db, "data_dir": str(tmp_path / "vault"), "tls": {"enabled": False},
                        "metrics": {"public": True}, "watch": w,
                        "dashboard": {"login_failures": 3, "login_window_seconds": 600}}, tmp_path)
    app = create_app(cfg, clock)
    return Env(app, app.state.vault, clock, app.state.watch)




class Hook:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

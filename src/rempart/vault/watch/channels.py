"""Delivery channels: e-mail over SMTP (STARTTLS or implicit TLS, AUTH) and signed webhooks.

Secrets (the SMTP password, webhook secrets) are never logged and never appear in an error
message; errors are translated to :class:`~rempart.core.errors.TransientError` (retry may help)
or :class:`~rempart.core.errors.UserError` (the receiver refused for good).

Webhook signature: ``X-Rempart-Timestamp: <unix seconds>`` and ``X-Rempart-Signature:
sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``. Receivers check it with
:func:`verify_signature` (constant-time, with a freshness window against replays).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import httpx

from rempart.core.clock import Clock
from rempart.core.errors import TransientError, UserError
from rempart.vault.watch.config import SmtpConfig, WebhookConfig

log = logging.getLogger("rempart.vault.watch")


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    body: str
    html: str | None = None


def build_message(sender: str, mail: Mail, *, when: float) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(mail.to)
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(when, localtime=False)
    msg["Message-ID"] = make_msgid(domain="rempart.invalid")
    msg.set_content(mail.body)
    if mail.html:
        msg.add_alternative(mail.html, subtype="html")
    return msg


class EmailChannel:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def send(self, mails: Sequence[Mail], *, when: float) -> list[Exception | None]:
        """Send every mail over one connection; returns per-mail None (sent) or the error."""
        c = self.config
        if not c.enabled:
            raise UserError("no SMTP server is configured ([watch.smtp] host)")
        results: list[Exception | None] = []
        try:
            if c.ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout_seconds,
                                                      context=self._context())
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout_seconds)
            with smtp:
                smtp.ehlo()
                if c.starttls and not c.ssl:
                    smtp.starttls(context=self._context())
                    smtp.ehlo()
                if c.username:
                    smtp.login(c.username, c.password)
                for mail in mails:
                    try:
                        smtp.send_message(build_message(c.sender, mail, when=when))
                        results.append(None)
                    except smtplib.SMTPRecipientsRefused as exc:
                        results.append(UserError(f"the SMTP server refused the recipients ({len(exc.recipients)})"))
                    except smtplib.SMTPResponseException as exc:
                        results.append(TransientError(f"the SMTP server answered {exc.smtp_code}"))
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientError(f"SMTP authentication failed at {c.host}:{c.port} (code {exc.smtp_code})") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientError(f"the SMTP server {c.host}:{c.port} does not offer STARTTLS or AUTH") from exc
        except ssl.SSLError as exc:
            raise TransientError(f"TLS with the SMTP server {c.host}:{c.port} failed: {exc.reason}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"cannot send mail through {c.host}:{c.port}: {type(exc).__name__}") from None
        log.info("smtp: %d of %d mail(s) accepted by %s", results.count(None), len(mails), c.host)
        return results


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *, now: float,
                     tolerance: float = 300.0) -> bool:
    """True if ``signature`` is right for (timestamp, body) and the timestamp is fresh."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class WebhookChannel:
    def __init__(self, config: WebhookConfig, clock: Clock, *, sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.transport = transport

    def post(self, body: bytes) -> int:
        """POST with retries and exponential backoff; returns the HTTP status of the success."""
        c = self.config
        verify: str | bool = c.ca_file or True
        last = "no attempt"
        with httpx.Client(timeout=c.timeout_seconds, verify=verify, transport=self.transport,
                          follow_redirects=False) as client:
            for attempt in range(max(1, c.attempts)):
                if attempt:
                    self.sleep(c.backoff_seconds * (2 ** (attempt - 1)))
                ts = int(self.clock.now().timestamp())
                headers = {"Content-Type": "application/json", "User-Agent": "rempart-vault",
                           "X-Rempart-Timestamp": str(ts)}
                if c.secret:
                    headers["X-Rempart-Signature"] = sign(c.secret, ts, body)
                try:
                    r = client.post(c.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                    continue
                if 200 <= r.status_code < 300:
                    return r.status_code
                last = f"HTTP {r.status_code}"
                if r.status_code not in RETRY_STATUS:
                    raise UserError(f"the webhook receiver refused the notification ({last})")
        raise TransientError(f"webhook delivery failed after {max(1, c.attempts)} attempt(s) ({last})")

"""Channels against real servers: a real SMTP server (aiosmtpd, STARTTLS with a self-signed
certificate, AUTH) and a real local HTTP server receiving signed webhooks."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from watch_helpers import Hook, SmtpServer

from rempart.core.clock import SystemClock
from rempart.core.errors import TransientError, UserError
from rempart.testing.servers import free_ports
from rempart.vault.watch.channels import EmailChannel, Mail, WebhookChannel, verify_signature
from rempart.vault.watch.config import SmtpConfig, WebhookConfig


def smtp_config(s: SmtpServer, **kw: Any) -> SmtpConfig:
    base = dict(host="127.0.0.1", port=s.port, starttls=True, username=s.username, password=s.password,
                sender="Rempart <vault@example.test>", ca_file=str(s.cert), timeout_seconds=10)
    base.update(kw)
    return SmtpConfig(**base)


def test_email_over_starttls_with_auth(smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    res = EmailChannel(smtp_config(smtp)).send(
        [Mail(("dr@cabinet.test",), "[Rempart] Alerte é", "Corps accentué: déjà\n")], when=1767600000)
    assert res == [None]
    (m,) = smtp.wait_for(lambda m: True)
    assert m["X-Test-TLS"] == "yes" and m["X-Test-Auth"] == "yes"
    assert m["X-Test-Rcpt"] == "dr@cabinet.test"
    assert m["Subject"] == "[Rempart] Alerte é"
    assert "déjà" in m.get_content()
    assert smtp.auth_attempts == [("vault", True)]
    assert smtp.password not in caplog.text


def test_email_wrong_password_is_clear_and_secret_free(smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransientError) as ei:
        EmailChannel(smtp_config(smtp, password="wrong-Pa55word-xyz")).send([Mail(("a@b.test",), "s", "b")], when=0)
    assert "authentication failed" in ei.value.message
    assert "wrong-Pa55word-xyz" not in ei.value.message and "wrong-Pa55word-xyz" not in caplog.text
    assert smtp.messages == []


def test_email_refuses_an_untrusted_certificate(smtp: SmtpServer) -> None:
    with pytest.raises(TransientError) as ei:
        EmailChannel(smtp_config(smtp, ca_file="")).send([Mail(("a@b.test",), "s", "b")], when=0)
    assert "TLS" in ei.value.message
    assert smtp.messages == [] and smtp.auth_attempts == []  # the password never left


def test_email_without_starttls_is_refused_by_the_server(smtp: SmtpServer) -> None:
    with pytest.raises(TransientError):
        EmailChannel(smtp_config(smtp, starttls=False)).send([Mail(("a@b.test",), "s", "b")], when=0)
    assert smtp.messages == []


def test_webhook_signed_and_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hook = Hook([503, 502, 200])
    sleeps: list[float] = []
    try:
        body = json.dumps({"event": "opened", "practice": "cabinet-a"}).encode()
        cfg = WebhookConfig(url=hook.url, secret="hook-secret-123456", attempts=4, backoff_seconds=0.5)
        assert WebhookChannel(cfg, SystemClock(), sleep=sleeps.append).post(body) == 200
    finally:
        hook.close()
    assert len(hook.received) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff between attempts
    headers, got = hook.received[-1]
    assert got == body and headers["content-type"] == "application/json"
    now = SystemClock().now().timestamp()
    assert verify_signature("hook-secret-123456", headers["x-rempart-timestamp"], got,
                            headers["x-rempart-signature"], now=now)
    assert not verify_signature("other-secret", headers["x-rempart-timestamp"], got,
                                headers["x-rempart-signature"], now=now)
    assert not verify_signature("hook-secret-123456", headers["x-rempart-timestamp"], got + b" ",
                                headers["x-rempart-signature"], now=now)
    assert not verify_signature("hook-secret-123456", headers["x-rempart-timestamp"], got,
                                headers["x-rempart-signature"], now=now + 3600)  # stale: replay refused
    assert "hook-secret-123456" not in caplog.text


def test_webhook_gives_up_and_does_not_retry_a_client_error() -> None:
    hook = Hook([503] * 10)
    try:
        with pytest.raises(TransientError) as ei:
            WebhookChannel(WebhookConfig(url=hook.url, secret="s" * 20, attempts=3, backoff_seconds=0.01),
                           SystemClock(), sleep=lambda s: None).post(b"{}")
        assert "3 attempt" in ei.value.message and len(hook.received) == 3
        hook.statuses[:] = [400]
        hook.received.clear()
        with pytest.raises(UserError):
            WebhookChannel(WebhookConfig(url=hook.url, attempts=3), SystemClock(), sleep=lambda s: None).post(b"{}")
        assert len(hook.received) == 1
    finally:
        hook.close()


def test_webhook_unreachable_is_transient() -> None:
    (port,) = free_ports(1)
    with pytest.raises(TransientError) as ei:
        WebhookChannel(WebhookConfig(url=f"http://127.0.0.1:{port}/x", secret="zz-secret", attempts=2,
                                     backoff_seconds=0.01), SystemClock(), sleep=lambda s: None).post(b"{}")
    assert "zz-secret" not in ei.value.message

"""Send what the engine queued in the outbox, with retries: a notification that cannot be
delivered now stays queued and is tried again later (exponential backoff, capped), so an SMTP
outage delays alerts but never drops them silently (each failure is logged without secrets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from rempart.core.errors import RempartError, UserError
from rempart.vault.service import Vault
from rempart.vault.watch import tables as t
from rempart.vault.watch.channels import EmailChannel, Mail, WebhookChannel
from rempart.vault.watch.config import WatchConfig
from rempart.vault.watch.messages import alert_mail

log = logging.getLogger("rempart.vault.watch")

MAX_ATTEMPTS = 12
RETRY_BASE = 60.0
RETRY_CAP = 3600.0


@dataclass
class DispatchResult:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def render_mail(payload: dict[str, Any], to: list[str]) -> Mail:
    if payload["event"] == "report":
        from rempart.vault.watch.report import render_report

        subject, body = render_report(payload, payload.get("lang", "fr"))
    else:
        subject, body = alert_mail(payload, payload.get("lang", "fr"))
    return Mail(tuple(to), subject, body)


class Dispatcher:
    def __init__(self, vault: Vault, config: WatchConfig, *, sleep: Callable[[float], None] | None = None) -> None:
        self.vault = vault
        self.config = config
        self.sleep = sleep

    def pending(self, limit: int = 200) -> list[Any]:
        now = self.vault.now()
        with self.vault.engine.connect() as conn:
            return list(conn.execute(sa.select(t.outbox).where(
                t.outbox.c.sent.is_(None), t.outbox.c.next_try <= now, t.outbox.c.attempts < MAX_ATTEMPTS,
            ).order_by(t.outbox.c.id).limit(limit)).all())

    def run(self) -> DispatchResult:
        res = DispatchResult()
        rows = self.pending()
        mails = [r for r in rows if r.channel == "email"]
        hooks = [r for r in rows if r.channel == "webhook"]
        if mails:
            self._send_mails(mails, res)
        for r in hooks:
            self._send_hook(r, res)
        return res

    def _mark(self, row: Any, err: Exception | None, res: DispatchResult, *, permanent: bool = False) -> None:
        now = self.vault.now()
        with self.vault.engine.begin() as conn:
            if err is None:
                conn.execute(t.outbox.update().where(t.outbox.c.id == row.id).values(
                    sent=now, attempts=row.attempts + 1, last_error=None))
                res.sent += 1
                return
            attempts = MAX_ATTEMPTS if permanent else row.attempts + 1
            delay = min(RETRY_CAP, RETRY_BASE * (2 ** row.attempts))
            msg = err.message if isinstance(err, RempartError) else type(err).__name__
            conn.execute(t.outbox.update().where(t.outbox.c.id == row.id).values(
                attempts=attempts, next_try=now + delay, last_error=msg[:200]))
        res.failed += 1
        res.errors.append(msg)
        log.warning("notification %d (%s, %s) not delivered: %s", row.id, row.channel, row.event, msg)

    def _send_mails(self, rows: list[Any], res: DispatchResult) -> None:
        if not self.config.smtp.enabled:
            for r in rows:
                self._mark(r, UserError("no SMTP server configured"), res, permanent=True)
            return
        mails = [render_mail(json.loads(r.payload), json.loads(r.target)) for r in rows]
        try:
            results = EmailChannel(self.config.smtp).send(mails, when=self.vault.now())
        except RempartError as exc:
            for r in rows:
                self._mark(r, exc, res)
            return
        for r, err in zip(rows, results, strict=True):
            self._mark(r, err, res, permanent=isinstance(err, UserError))

    def _send_hook(self, row: Any, res: DispatchResult) -> None:
        hook = next((h for h in self.config.webhooks if h.url == row.target), None)
        if hook is None:
            self._mark(row, UserError("webhook no longer configured"), res, permanent=True)
            return
        channel = WebhookChannel(hook, self.vault.clock, sleep=self.sleep) if self.sleep else \
            WebhookChannel(hook, self.vault.clock)
        try:
            channel.post(row.payload.encode())
        except UserError as exc:
            self._mark(row, exc, res, permanent=True)
            return
        except RempartError as exc:
            self._mark(row, exc, res)
            return
        self._mark(row, None, res)

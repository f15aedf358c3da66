"""The watch as a running service: one ``tick`` evaluates expectations, queues the weekly
reports that are due and sends the outbox; :class:`WatchLoop` runs ticks in a background thread
of the vault process every ``interval_seconds``; ``rempart vault watch --once`` runs one tick."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from rempart.core.errors import RempartError
from rempart.vault.service import Vault
from rempart.vault.watch import tables
from rempart.vault.watch.config import WatchConfig
from rempart.vault.watch.dispatch import Dispatcher, DispatchResult
from rempart.vault.watch.engine import Evaluation, Watch
from rempart.vault.watch.report import due_reports

log = logging.getLogger("rempart.vault.watch")


@dataclass
class TickResult:
    evaluation: Evaluation
    reports: int
    dispatch: DispatchResult


class WatchService:
    def __init__(self, vault: Vault, config: WatchConfig, *, sleep: Callable[[float], None] | None = None) -> None:
        tables.migrate(vault.engine)
        self.vault = vault
        self.config = config
        self.watch = Watch(vault, config)
        self.dispatcher = Dispatcher(vault, config, sleep=sleep)
        self._lock = threading.Lock()  # one tick at a time (loop and a manual trigger)

    def tick(self) -> TickResult:
        with self._lock:
            ev = self.watch.evaluate()
            n = due_reports(self.vault, self.config, self.watch)
            sent = self.dispatcher.run()
        for name, a in ev.actions:
            log.info("alert %s %s %s (to %s)", name, a.kind, a.level, ",".join(a.audiences))
        return TickResult(ev, n, sent)

    def open_alert_counts(self) -> dict[tuple[str, str], int]:
        from rempart.vault import db

        with self.vault.engine.connect() as conn:
            rows = conn.execute(
                sa.select(db.practices.c.name, tables.alerts.c.level, sa.func.count())
                .select_from(tables.alerts.join(db.practices, db.practices.c.id == tables.alerts.c.practice_id))
                .where(tables.alerts.c.is_open.is_(True))
                .group_by(db.practices.c.name, tables.alerts.c.level)).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}


class WatchLoop:
    """Background thread calling ``service.tick()`` every ``interval`` seconds until stopped."""

    def __init__(self, service: WatchService, interval: float) -> None:
        self.service = service
        self.interval = max(0.1, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rempart-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            try:
                self.service.tick()
            except RempartError as exc:
                log.error("watch tick failed: %s", exc.message)
            except Exception:  # keep the loop alive whatever one tick does; logged with its traceback
                log.exception("watch tick failed")
            if self._stop.wait(self.interval):
                return

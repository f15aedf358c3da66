"""Retention and garbage collection on a schedule inside ``rempart vault serve``.

``[gc] interval_seconds`` (0 = off) starts a background thread that, every interval (plus a
random jitter of up to ``jitter_seconds`` so that many vaults sharing a storage do not start
together), runs :func:`rempart.vault.gc.run_gc` for one practice at a time. Every safety rule
lives in ``run_gc`` itself (incident freeze, minimum age, grace period, practice lock), so the
scheduled pass is exactly a ``rempart vault gc`` run; the scheduler adds:

* never two passes at once, in this process or another one (``rempart vault gc`` from cron or
  the admin route run by a second worker): an exclusive, non-blocking lock on
  ``<data_dir>/gc.lock``; a pass that finds it held is skipped and counted;
* an audit record at the start and end of each pass (actor ``vault-gc``);
* Prometheus metrics (``rempart_vault_gc_*``): last run time, duration, bytes freed, errors;
* with ``[gc] scrub_gib``, a scrub of each practice after its GC, within that budget
  (:mod:`rempart.vault.scrub`: least recently verified objects first, so that daily passes cycle
  through all the data), also for a frozen practice; ``rempart_vault_scrub_*`` metrics.

Times come from the vault's Clock; waiting between passes uses a stop Event so the server's
shutdown interrupts it at once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from rempart.core.errors import NotFound, RempartError
from rempart.vault.gc import GcReport, run_gc
from rempart.vault.scrub import scrub_practice
from rempart.vault.service import Vault
from rempart.vault.store import Store

log = logging.getLogger("rempart.vault.gc")
ACTOR = "vault-gc"


@contextmanager
def gc_lock(path: Path) -> Iterator[bool]:
    """Exclusive, non-blocking inter-process lock; yields whether it was obtained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except ImportError:  # pragma: no cover - non-POSIX: the in-process lock still applies
            pass
        yield True
    finally:
        os.close(fd)  # closing releases the flock


class GcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("rempart_vault_gc_runs", "Scheduled GC passes, by outcome", ["outcome"],
                            registry=registry)
        self.last_run = Gauge("rempart_vault_gc_last_run_timestamp_seconds",
                              "Server time at which the last scheduled GC pass ended", registry=registry)
        self.last_duration = Gauge("rempart_vault_gc_last_duration_seconds",
                                   "Duration of the last scheduled GC pass", registry=registry)
        self.last_freed = Gauge("rempart_vault_gc_last_bytes_freed", "Bytes freed by the last scheduled pass",
                                registry=registry)
        self.freed = Counter("rempart_vault_gc_bytes_freed", "Bytes freed by scheduled GC", registry=registry)
        self.packs = Counter("rempart_vault_gc_packs_deleted", "Packs deleted by scheduled GC",
                             registry=registry)
        self.forgotten = Counter("rempart_vault_gc_snapshots_forgotten",
                                 "Snapshots forgotten by scheduled retention", registry=registry)
        self.errors = Counter("rempart_vault_gc_errors", "Practices whose scheduled GC failed",
                              registry=registry)
        self.scrubbed = Counter("rempart_vault_scrub_bytes", "Bytes re-hashed by the scheduled scrub",
                                registry=registry)
        self.damaged = Counter("rempart_vault_scrub_damaged_objects",
                               "Damaged or missing objects found by the scheduled scrub", registry=registry)
        self.replicated = Counter("rempart_vault_replica_bytes", "Bytes copied to the [replica] storage",
                                  registry=registry)
        self.replica_failures = Counter("rempart_vault_replica_failures",
                                        "Practices whose replication failed or found damaged objects",
                                        registry=registry)
        self.renewed = Counter("rempart_vault_lock_renewals",
                               "S3 Object Lock dates pushed forward on kept objects by scheduled GC",
                               registry=registry)
        self.frozen = Counter("rempart_vault_gc_practices_frozen",
                              "Practices skipped by scheduled GC because of an incident freeze",
                              registry=registry)


@dataclass
class PassResult:
    ran: bool
    reports: list[GcReport] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    damaged: int = 0  # objects the scrub found damaged (``scrub_bytes``)

    @property
    def freed_bytes(self) -> int:
        return sum(r.freed_bytes for r in self.reports)


class GcScheduler:
    """Background thread running a retention + GC pass every ``interval`` (+ jitter) seconds."""

    def __init__(self, vault: Vault, metrics: GcMetrics, *, interval: float, jitter: float = 0.0,
                 rng: random.Random | None = None, scrub_bytes: int = 0) -> None:
        self.vault = vault
        self.scrub_bytes = scrub_bytes
        self.metrics = metrics
        self.interval = max(0.1, interval)
        self.jitter = max(0.0, jitter)
        self.rng = rng or random.Random()
        self.lock_path = vault.config.data_dir / "gc.lock"
        self._stop = threading.Event()
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None
        self._replica: Store | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rempart-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def next_wait(self) -> float:
        return self.interval + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def first_wait(self) -> float:
        """Until one interval after the last finished pass (kept across restarts through the
        audit trail, so a vault restarted more often than its interval still collects)."""
        import sqlalchemy as sa

        from rempart.vault import db

        with self.vault.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(db.audit.c.time)).where(
                db.audit.c.practice.is_(None), db.audit.c.action == "gc.scheduled",
                db.audit.c.outcome.in_(("ok", "error")))).scalar()
        if last is None:
            return self.next_wait()
        due = max(0.0, float(last) + self.interval - self.vault.now())
        return min(due, self.interval) + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def _loop(self) -> None:
        try:
            wait = self.first_wait()
        except Exception:  # the database is not reachable yet: a full interval then
            log.exception("could not read the last scheduled GC time")
            wait = self.next_wait()
        while not self._stop.wait(wait):
            wait = self.next_wait()
            try:
                self.run_pass()
            except Exception:  # keep the loop alive whatever one pass does; logged with its traceback
                log.exception("scheduled GC pass failed")
                self.metrics.runs.labels("failed").inc()

    def run_pass(self) -> PassResult:
        """One pass over every practice, one at a time; skipped if another pass holds the lock."""
        if not self._running.acquire(blocking=False):
            self.metrics.runs.labels("skipped").inc()
            return PassResult(False)
        try:
            with gc_lock(self.lock_path) as got:
                if not got:
                    self.metrics.runs.labels("skipped").inc()
                    return PassResult(False)
                return self._pass()
        finally:
            self._running.release()

    def _scrub(self, name: str, res: PassResult) -> None:
        try:
            rep = scrub_practice(self.vault, self.vault.practice(name), max_bytes=self.scrub_bytes, actor=ACTOR)
        except RempartError as exc:
            res.errors[name] = exc.reference
            self.metrics.errors.inc()
            log.error("scheduled scrub of %s failed: %s", name, exc.message)
            return
        self.metrics.scrubbed.inc(rep.bytes)
        self.metrics.damaged.inc(len(rep.damaged))
        res.damaged += len(rep.damaged)
        if rep.damaged:
            log.error("scrub of %s: %d damaged object(s)", name, len(rep.damaged))

    def _replicate(self, name: str, res: PassResult) -> None:
        from rempart.vault.replica import open_replica, replicate_practice

        try:
            if self._replica is None:
                self._replica = open_replica(self.vault)
            rep = replicate_practice(self.vault, self._replica, self.vault.practice(name), actor=ACTOR)
        except RempartError as exc:
            res.errors[name] = exc.reference
            self.metrics.replica_failures.inc()
            log.error("replication of %s failed: %s", name, exc.message)
            return
        self.metrics.replicated.inc(rep.bytes)
        if rep.damaged:
            self.metrics.replica_failures.inc()
            res.damaged += len(rep.damaged)

    def _pass(self) -> PassResult:
        v = self.vault
        t0 = v.clock.monotonic()
        res = PassResult(True)
        names = [p.name for p in v.practices()]
        v.audit_now(ACTOR, "gc.scheduled", None, "started", {"practices": len(names)})
        for name in names:
            if self._stop.is_set():
                break
            try:
                rep = run_gc(v, v.practice(name), actor=ACTOR)
            except NotFound:
                continue  # removed meanwhile
            except RempartError as exc:
                res.errors[name] = exc.reference
                self.metrics.errors.inc()
                log.error("scheduled GC of %s failed: %s", name, exc.message)
                continue
            except Exception as exc:  # one practice must not stop the others; logged with traceback
                res.errors[name] = type(exc).__name__
                self.metrics.errors.inc()
                log.exception("scheduled GC of %s failed", name)
                continue
            res.reports.append(rep)
            if self.scrub_bytes:
                self._scrub(name, res)
            if v.config.replica is not None:
                self._replicate(name, res)
            self.metrics.freed.inc(rep.freed_bytes)
            self.metrics.packs.inc(len(rep.deleted_packs))
            self.metrics.forgotten.inc(len(rep.forgotten))
            self.metrics.renewed.inc(rep.renewed_locks)
            if rep.frozen:
                self.metrics.frozen.inc()
        res.seconds = v.clock.monotonic() - t0
        self.metrics.last_duration.set(res.seconds)
        self.metrics.last_freed.set(res.freed_bytes)
        self.metrics.last_run.set(v.now())
        self.metrics.runs.labels("error" if res.errors else "ok").inc()
        v.audit_now(ACTOR, "gc.scheduled", None, "error" if res.errors else "ok", {
            "practices": len(res.reports), "errors": len(res.errors), "freed_bytes": res.freed_bytes,
            "deleted_packs": sum(len(r.deleted_packs) for r in res.reports),
            "forgotten": sum(len(r.forgotten) for r in res.reports),
            "renewed_locks": sum(r.renewed_locks for r in res.reports),
            "frozen": sum(1 for r in res.reports if r.frozen), "damaged": res.damaged,
            "seconds": round(res.seconds, 3)})
        log.info("scheduled GC: %d practice(s), %d bytes freed, %d error(s) in %.1f s",
                 len(res.reports), res.freed_bytes, len(res.errors), res.seconds)
        return res

"""The scheduled agent: one attempt (hooks, database dumps, backup, report) and the loop.

Time comes from an injected Clock and waiting goes through an injected ``sleep``, so the loop
runs under a FakeClock in tests exactly as under the system clock in production.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol

from rempart.agent.backup import BackupResult, run_backup
from rempart.agent.config import AgentConfig
from rempart.agent.credentials import load_credential
from rempart.agent.hooks import HookRunner
from rempart.agent.schedule import backoff, next_due
from rempart.agent.sources import SourceResult, dump_all
from rempart.agent.state import AgentState, RunLock, load_state, save_state, staging_dir
from rempart.core.clock import Clock, to_iso
from rempart.core.errors import ConfigError, LockedError, RempartError, TransientError
from rempart.repository.repo import Repository
from rempart.snapshot.options import BackupOptions

log = logging.getLogger("rempart.agent")

#: errors that a later attempt may overcome (network, vault restarting, another run holding the lock)
RETRYABLE: tuple[type[BaseException], ...] = (TransientError, LockedError, OSError)
MAX_NAP = 60.0


class Reporter(Protocol):
    def report_run(self, outcome: str, error_class: str | None, counts: dict[str, int]) -> None: ...


@dataclass
class RunRecord:
    start: datetime
    end: datetime
    outcome: str                     # ok | partial | suspicious | failed
    counts: dict[str, int] = field(default_factory=dict)
    snapshot: str | None = None
    error: str | None = None
    error_class: str | None = None
    retryable: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def vault_outcome(self) -> str:
        """What the vault is told (it records suspicious runs as such)."""
        return self.outcome


class AgentService:
    def __init__(
        self,
        config: AgentConfig,
        state_dir: Path,
        clock: Clock,
        tz: tzinfo,
        *,
        open_repo: Callable[[], Repository],
        reporter: Callable[[], Reporter | None] = lambda: None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.clock = clock
        self.tz = tz
        self.open_repo = open_repo
        self.reporter = reporter
        self.env = dict(env or {})
        self.stop = stop or threading.Event()
        self.sleep = sleep or self.stop.wait
        self.rng = rng or random.Random()

    # --- one attempt ----------------------------------------------------------------------

    def attempt(self) -> RunRecord:
        start = self.clock.now()
        t0 = self.clock.monotonic()
        try:
            with RunLock(self.state_dir):
                rec = self._attempt_locked(start)
        except RempartError as exc:
            rec = RunRecord(start, self.clock.now(), "failed", error=exc.message, error_class=exc.reference,
                            retryable=isinstance(exc, RETRYABLE))
        except Exception as exc:  # an unexpected failure must still be recorded and reported
            log.exception("backup attempt failed unexpectedly")
            rec = RunRecord(start, self.clock.now(), "failed", error=f"{type(exc).__name__}: {exc}",
                            error_class=type(exc).__name__[:64], retryable=isinstance(exc, RETRYABLE))
        rec.counts["seconds"] = int(self.clock.monotonic() - t0)
        return rec

    def _attempt_locked(self, start: datetime) -> RunRecord:
        cfg = self.config
        staging = staging_dir(self.state_dir)
        if not cfg.backup.paths and not cfg.sources:
            raise ConfigError(f"nothing to back up: add [backup] paths or [[sources]] to {cfg.path or 'the configuration'}")
        hooks = HookRunner(cfg.hooks, self.env)
        sources: list[SourceResult] = []
        with hooks:
            if cfg.sources:
                sources = dump_all(cfg.sources, staging, self.env)
            repo = self.open_repo()
            try:
                cred = load_credential(self.state_dir, repo.config.id)
                paths = list(cfg.backup.paths) + ([staging] if cfg.sources else [])
                options = BackupOptions(
                    workers=cfg.limits.workers, max_inflight=cfg.limits.max_inflight_files,
                    excludes=cfg.backup.excludes,
                    reread_after=cfg.backup.reread_days * 86400 if cfg.backup.reread_days > 0 else None,
                )
                detection = self._detection(repo.config.id)
                if detection is not None:
                    self._sync_incident(detection, repo.config.id)
                result = run_backup(repo, cred, paths, self.state_dir, self.clock, options=options,
                                    detection=detection, tags=["agent"])
            finally:
                repo.backend.close()
        return self._record(start, result, sources, hooks.warnings)

    def _detection(self, repo_id: str) -> Any:
        if not self.config.backup.detect:
            return None
        if importlib.util.find_spec("rempart.agent.detection") is None:
            log.warning("ransomware detection is not available in this build; backing up without it")
            return None
        from rempart.agent.detection import make_detection  # type: ignore[import-not-found,unused-ignore]

        return make_detection(self.state_dir, repo_id)

    def _sync_incident(self, detection: Any, repo_id: str) -> None:
        """Clear the local damage ledger if the vault says an admin released the incident."""
        reporter = self.reporter()
        status = getattr(reporter, "status", None)
        if status is None:
            return
        from rempart.agent.incident import sync_incident

        sync_incident(detection, self.state_dir, repo_id, status)

    def _record(self, start: datetime, result: BackupResult, sources: list[SourceResult],
                hook_warnings: list[str]) -> RunRecord:
        s, st = result.stats, result.session_stats
        for notice in result.notices:
            log.warning("%s", notice)
        failed = [x for x in sources if not x.ok]
        warnings = [f"source {x.name}: {x.error}" for x in failed] + hook_warnings + list(s.warnings)
        counts = {
            "files": s.files, "files_new": s.files_new, "files_changed": s.files_changed,
            "bytes": s.bytes, "bytes_read": s.bytes_read, "bytes_uploaded": st.get("bytes_stored", 0),
            "packs_uploaded": st.get("packs", 0), "warnings": len(warnings),
            "sources_ok": len(sources) - len(failed), "sources_failed": len(failed),
            "suspicious": int(result.suspicious),
        }
        outcome = "suspicious" if result.suspicious else ("partial" if warnings else "ok")
        return RunRecord(start, self.clock.now(), outcome, counts, result.snapshot, warnings=warnings)

    # --- bookkeeping ----------------------------------------------------------------------

    def run_and_record(self, state: AgentState) -> RunRecord:
        rec = self.attempt()
        sched = self.config.schedule
        state.runs += 1
        state.set_time("last_end", rec.end)
        state.last_outcome, state.last_error, state.last_error_class = rec.outcome, rec.error, rec.error_class
        state.last_counts = dict(rec.counts)
        if rec.outcome != "failed":
            state.failures, state.retry_at = 0, None
            state.set_time("last_start", rec.start)
            state.set_time("last_success", rec.start)
            state.last_snapshot = rec.snapshot
        else:
            state.failures += 1
            if rec.retryable and state.failures <= sched.retry_attempts:
                wait = backoff(sched, state.failures, self.rng)
                state.set_time("retry_at", self.clock.now() + timedelta(seconds=wait))
            else:  # give up until the next regular slot
                state.failures, state.retry_at = 0, None
                state.set_time("last_start", rec.start)
        state.queue_report({"outcome": rec.vault_outcome, "error_class": rec.error_class,
                            "counts": dict(rec.counts), "time": to_iso(rec.start)})
        save_state(self.state_dir, state)
        self.flush_reports(state)
        self._log(rec, state)
        return rec

    def flush_reports(self, state: AgentState) -> None:
        """Send queued run reports; keep them for later if the vault is unreachable."""
        if not state.pending_reports:
            return
        try:
            reporter = self.reporter()
            if reporter is None:
                state.pending_reports.clear()
            else:
                while state.pending_reports:
                    r = state.pending_reports[0]
                    reporter.report_run(r["outcome"], r.get("error_class"), dict(r.get("counts", {})))
                    state.pending_reports.pop(0)
        except Exception as exc:  # the report is retried with the next run
            log.warning("could not report to the vault (%s); will retry", getattr(exc, "message", type(exc).__name__))
        save_state(self.state_dir, state)

    def _log(self, rec: RunRecord, state: AgentState) -> None:
        c = rec.counts
        if rec.outcome == "failed":
            nxt = f"retry at {state.retry_at}" if state.retry_at else "waiting for the next slot"
            log.error("run failed (%s): %s; %s", rec.error_class, rec.error, nxt)
        else:
            log.info("run %s: snapshot %s, %d files, %d bytes uploaded in %d packs, %d warnings",
                     rec.outcome, (rec.snapshot or "")[:8], c.get("files", 0), c.get("bytes_uploaded", 0),
                     c.get("packs_uploaded", 0), c.get("warnings", 0))
            for w in rec.warnings[:20]:
                log.warning("%s", w)

    # --- the loop -------------------------------------------------------------------------

    def due(self, state: AgentState) -> datetime:
        when = next_due(self.config.schedule, self.tz, state.time("last_start"), state.time("retry_at"))
        assert when is not None  # config validation guarantees a schedule
        return when

    def run_forever(self, *, max_runs: int | None = None) -> int:
        """Run the schedule until ``stop`` is set (or ``max_runs`` attempts); returns attempts."""
        state = load_state(self.state_dir)
        self.flush_reports(state)
        runs = 0
        log.info("agent started; next run due %s", to_iso(max(self.due(state), self.clock.now())))
        while not self.stop.is_set():
            now = self.clock.now()
            due = self.due(state)
            if due > now:
                self.sleep(min((due - now).total_seconds(), MAX_NAP))
                continue
            self.run_and_record(state)
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
        return runs

    def run_once(self) -> RunRecord:
        """One run now, with the configured retries (``rempart agent run --once``)."""
        state = load_state(self.state_dir)
        self.flush_reports(state)
        while True:
            rec = self.run_and_record(state)
            retry = state.time("retry_at")
            if retry is None or self.stop.is_set():
                return rec
            self.sleep(max(0.0, (retry - self.clock.now()).total_seconds()))



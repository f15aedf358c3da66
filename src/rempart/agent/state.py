"""The agent's persisted schedule state (``<state>/agent/state.json``) and its run lock.

Written atomically (temporary file, fsync, rename) after every attempt, so a restart — reboot,
crash, kill — picks up the schedule where it was: when the last run started, how it ended,
pending retries, and run reports the vault has not acknowledged yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rempart.core.clock import from_iso, to_iso
from rempart.core.errors import IntegrityError, LockedError

MAX_PENDING_REPORTS = 50


@dataclass
class AgentState:
    last_start: str | None = None      # start of the last finished run (ISO, UTC)
    last_end: str | None = None
    last_outcome: str | None = None    # ok | partial | suspicious | failed
    last_error: str | None = None      # local only: may name a source, never sent to the vault
    last_error_class: str | None = None
    last_success: str | None = None    # start of the last run that stored a snapshot
    last_snapshot: str | None = None
    last_counts: dict[str, int] = field(default_factory=dict)
    failures: int = 0                  # consecutive failed attempts of the current run
    retry_at: str | None = None
    runs: int = 0
    pending_reports: list[dict[str, Any]] = field(default_factory=list)

    def time(self, name: str) -> datetime | None:
        v = getattr(self, name)
        return from_iso(v) if v else None

    def set_time(self, name: str, value: datetime | None) -> None:
        setattr(self, name, to_iso(value) if value else None)

    def queue_report(self, report: dict[str, Any]) -> None:
        self.pending_reports.append(report)
        del self.pending_reports[:-MAX_PENDING_REPORTS]


def agent_dir(state_dir: Path) -> Path:
    return state_dir / "agent"


def staging_dir(state_dir: Path) -> Path:
    return agent_dir(state_dir) / "staging"


def state_path(state_dir: Path) -> Path:
    return agent_dir(state_dir) / "state.json"


def load_state(state_dir: Path) -> AgentState:
    path = state_path(state_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AgentState()
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"agent state file {path} is damaged; remove it to start afresh") from exc
    known = AgentState.__dataclass_fields__
    return AgentState(**{k: v for k, v in doc.items() if k in known})


def save_state(state_dir: Path, state: AgentState) -> None:
    path = state_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunLock:
    """An exclusive, non-blocking lock on ``<state>/agent/run.lock`` held for a whole run.

    The OS releases it when the process dies, so a killed agent never leaves a stale lock.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = agent_dir(state_dir) / "run.lock"
        self._f: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            _lock(f)
        except OSError:
            f.close()
            raise LockedError("another backup run of this agent is in progress",
                              hint="wait for it to finish; the scheduled agent never runs two at once") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            _unlock(self._f)
            self._f.close()
            self._f = None


def _lock(f: IO[str]) -> None:
    if os.name == "nt":
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(f: IO[str]) -> None:
    if os.name == "nt":
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)

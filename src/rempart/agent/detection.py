"""Detection wired into a backup run: the archiver's FileObserver plus the end-of-run verdict.

Everything computed here stays on the practice PC except ``summary`` (counts, score, rules,
clean point), which goes into the snapshot's plain header for the vault: never a path or name.
The damage ledger (slow attacks over days) lives in the state cache and advances only when a
snapshot is committed.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rempart.agent.credentials import repo_state_dir
from rempart.core.clock import from_iso
from rempart.detect.assess import DEFAULT_CONFIG, DetectionConfig, assess_run
from rempart.detect.canary import canary_files, check_canaries
from rempart.detect.judge import SPILL, RunJudge
from rempart.detect.ledger import DamageLedger
from rempart.detect.sampling import sample_plan
from rempart.detect.verdict import family
from rempart.snapshot.cache import StateCache

if TYPE_CHECKING:
    from rempart.detect.features import FileFeatures

# rempart.detect.features (and the format checks it loads) is imported when a first file is
# read or compared: a backup with nothing changed never needs it

LEDGER_KEY = "detection_ledger"
CANARY_FILE = "canaries.json"
RUN_DB = "detection-run.sqlite"  # this run's change rows (deleted at the end of the run)
MAX_DAMAGED_LISTED = 10_000  # damaged paths returned to the caller; all are counted


class AgentDetection:
    """Judges each changed file as the archiver reports it and keeps one compact row per change
    on disk (``RUN_DB`` in the state folder), so memory does not grow with the number of files.
    Up to ``spill`` rows wait in memory (a few MiB) and are written together."""

    spill = SPILL

    def __init__(self, folder: Path, config: DetectionConfig = DEFAULT_CONFIG) -> None:
        self.folder = folder
        self.config = config
        self._lock = threading.Lock()
        self._judge: RunJudge | None = None
        self._db: sqlite3.Connection | None = None
        self._local = threading.local()
        self._canaries = self._planted()
        self.ledger_state: str | None = None

    # --- FileObserver -------------------------------------------------------------------

    #: the archiver's reading processes compute features (and a new file's verdict) with this
    worker_features = "rempart.detect.judge:read_verdict"

    def sample_plan(self, size: int) -> list[tuple[int, int]]:
        return sample_plan(size)

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]:
        from rempart.detect.features import features_of

        feats = features_of(name, size, samples)
        out = feats.to_dict()
        self._local.last = (out, feats)  # ``changed`` follows on this thread: no re-parse
        return out

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None:
        if path in self._canaries:
            return
        from rempart.detect.features import FileFeatures

        last = getattr(self._local, "last", None)
        feats = last[1] if last is not None and last[0] is cur else FileFeatures.from_dict(cur)
        self._run().add_change(path, FileFeatures.from_dict(prev) if prev else None, feats)

    def judged_new(self, path: str, judged_raw: bytes) -> None:
        if path not in self._canaries:  # marshal: written by this program's reading process
            self._run().add_judged_new(path, marshal.loads(judged_raw))  # noqa: S302  # our own child, private pipe

    def _run(self) -> RunJudge:
        judge = self._judge
        if judge is not None:
            return judge
        with self._lock:
            if self._judge is None:
                path = self.folder / RUN_DB
                path.unlink(missing_ok=True)
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1024", "temp_store=FILE"):
                    self._db.execute(f"PRAGMA {pragma}")
                self._judge = RunJudge(self._db, self.spill)
            return self._judge

    def _close_run(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db = self._judge = None
            (self.folder / RUN_DB).unlink(missing_ok=True)

    # --- end of run ---------------------------------------------------------------------

    def assess(self, cache: StateCache, total_files: int, now: str) -> tuple[dict[str, Any], list[str]]:
        raw = cache.get_meta(LEDGER_KEY)
        ledger = DamageLedger.from_dict(json.loads(raw)) if raw else DamageLedger()
        planted = self._canaries
        families = Counter[str]()
        for t, n in cache.feature_type_counts().items():
            families[family(t)] += n
        status = None
        if planted:
            observed = {p: _digest(p) for p in planted}
            status = check_canaries(planted, observed)
        try:
            judge = self._run()
            judge.add_deletions((p, _features_of_json(f) if f else None)
                                for p, f in cache.iter_deleted() if p not in planted)
            result = assess_run(
                judge,
                total_files=max(0, total_files - len(planted)),
                ledger=ledger, time=from_iso(now), parent=cache.get_meta("last_snapshot"),
                canaries=status, family_counts=families, config=self.config,
            )
            changes, deletions = judge.changes, judge.deletions
            damaged = result.damaged_paths[:MAX_DAMAGED_LISTED]
        finally:
            self._close_run()
        self.ledger_state = json.dumps(result.ledger.to_dict(), sort_keys=True)
        summary = result.summary()
        summary["clean_point"] = result.clean_point
        summary["changed"] = changes
        summary["deleted"] = deletions
        if status is not None:
            summary["canaries"] = {"planted": status.planted, "tripped": status.modified + status.deleted}
        return summary, damaged

    def acknowledge(self, cache: StateCache) -> bool:
        """An operator closed the incident (false positive, or the PC was cleaned and restored):
        forget the accumulated damage so the next backup is judged afresh. Returns whether an
        incident was open."""
        raw = cache.get_meta(LEDGER_KEY)
        if not raw:
            return False
        ledger = DamageLedger.from_dict(json.loads(raw))
        was_open = ledger.incident_open
        ledger.acknowledge()
        cache.set_meta(LEDGER_KEY, json.dumps(ledger.to_dict(), sort_keys=True))
        return was_open

    def commit_state(self) -> dict[str, str]:
        """Meta to store with the committed snapshot (the advanced ledger)."""
        return {LEDGER_KEY: self.ledger_state} if self.ledger_state else {}

    # --- canaries -----------------------------------------------------------------------

    def _planted(self) -> dict[str, str]:
        try:
            return dict(json.loads((self.folder / CANARY_FILE).read_text()))
        except FileNotFoundError:
            return {}

    def plant_canaries(self, folders: list[Path], seed: bytes, per_folder: int = 2) -> dict[str, str]:
        """Write canary files (plausible documents nobody opens) into ``folders``; idempotent."""
        planted = self._planted()
        for folder in folders:
            for c in canary_files(str(folder), seed, per_folder):
                path = folder / c.name
                if str(path) in planted:
                    continue
                if not path.exists():
                    path.write_bytes(c.content)
                    planted[str(path)] = c.digest
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CANARY_FILE).write_text(json.dumps(planted, indent=1, sort_keys=True))
        self._canaries = planted
        return planted


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def make_detection(state_dir: Path, repo_id: str, config: DetectionConfig = DEFAULT_CONFIG) -> AgentDetection:
    folder = repo_state_dir(state_dir, repo_id)
    os.makedirs(folder, exist_ok=True)
    return AgentDetection(folder, config)


def _features_of_json(raw: str) -> FileFeatures:
    from rempart.detect.features import FileFeatures

    return FileFeatures.from_dict(json.loads(raw))

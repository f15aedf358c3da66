"""Detection wired into a backup run: the archiver's FileObserver plus the end-of-run verdict.

Everything computed here stays on the practice PC except ``summary`` (counts, score, rules,
clean point), which goes into the snapshot's plain header for the vault: never a path or name.
The damage ledger (slow attacks over days) lives in the state cache and advances only when a
snapshot is committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from rempart.agent.credentials import repo_state_dir
from rempart.core.clock import from_iso
from rempart.detect.assess import DEFAULT_CONFIG, Deletion, DetectionConfig, FileChange, assess_backup
from rempart.detect.canary import canary_files, check_canaries
from rempart.detect.features import FileFeatures, FileSample, extract_features
from rempart.detect.ledger import DamageLedger
from rempart.detect.sampling import sample_plan
from rempart.detect.verdict import family
from rempart.snapshot.cache import StateCache

LEDGER_KEY = "detection_ledger"
CANARY_FILE = "canaries.json"


class AgentDetection:
    def __init__(self, folder: Path, config: DetectionConfig = DEFAULT_CONFIG) -> None:
        self.folder = folder
        self.config = config
        self._changes: list[FileChange] = []
        self._lock = threading.Lock()
        self.ledger_state: str | None = None

    # --- FileObserver -------------------------------------------------------------------

    def sample_plan(self, size: int) -> list[tuple[int, int]]:
        return sample_plan(size)

    def features(self, name: str, size: int, samples: list[tuple[int, bytes]]) -> dict[str, Any]:
        return extract_features(FileSample(name, size, samples)).to_dict()

    def changed(self, path: str, prev: dict[str, Any] | None, cur: dict[str, Any], new: bool) -> None:
        change = FileChange(path, FileFeatures.from_dict(prev) if prev else None, FileFeatures.from_dict(cur))
        with self._lock:
            self._changes.append(change)

    # --- end of run ---------------------------------------------------------------------

    def assess(self, cache: StateCache, deleted: list[str], total_files: int, now: str) -> tuple[dict[str, Any], list[str]]:
        raw = cache.get_meta(LEDGER_KEY)
        ledger = DamageLedger.from_dict(json.loads(raw)) if raw else DamageLedger()
        planted = self._planted()
        deletions = [Deletion(p, FileFeatures.from_dict(f) if f else None)
                     for p, f in cache.deleted_features() if p not in planted]
        families = Counter[str]()
        for t, n in cache.feature_type_counts().items():
            families[family(t)] += n
        status = None
        if planted:
            observed = {p: _digest(p) for p in planted}
            status = check_canaries(planted, observed)
        with self._lock:
            changes = [c for c in self._changes if c.path not in planted]
        result = assess_backup(
            changes, deletions,
            total_files=max(0, total_files - len(planted)),
            ledger=ledger, time=from_iso(now), parent=cache.get_meta("last_snapshot"),
            canaries=status, family_counts=families, config=self.config,
        )
        self.ledger_state = json.dumps(result.ledger.to_dict(), sort_keys=True)
        summary = result.summary()
        summary["clean_point"] = result.clean_point
        summary["changed"] = len(changes)
        summary["deleted"] = len(deletions)
        if status is not None:
            summary["canaries"] = {"planted": status.planted, "tripped": status.modified + status.deleted}
        return summary, list(result.damaged_paths)

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

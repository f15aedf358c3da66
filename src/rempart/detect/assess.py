"""Judge a whole backup: per-file verdicts, deletions, renames, ransom notes, canaries, ledger.

The result's :meth:`BackupAssessment.summary` (verdict, counts per kind, score, rules) names no
file and goes into the snapshot's plain header; ``damaged_paths`` stay on the agent.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from rempart.detect import verdict as v
from rempart.detect.judge import RunJudge
from rempart.detect.ledger import DamageLedger

if TYPE_CHECKING:  # annotations only
    from rempart.detect.canary import CanaryStatus
    from rempart.detect.features import FileFeatures

CLEAN = "clean"
SUSPICIOUS = "suspicious"
# Families whose deletion in bulk matters (programs and caches come and go).
USER_FAMILIES = frozenset({"zip", "pdf", "jpeg", "png", "dicom", "sqlite", "text", "cfb", "data"})


@dataclass(frozen=True)
class DetectionConfig:
    window_days: int = 30
    ledger_min_files: int = 3  # damaged files within the window that raise an alert
    ledger_fraction: float = 0.002  # ... or this fraction of all files, whichever is larger
    note_dirs: int = 3  # ransom notes in this many folders
    mass_delete_min: int = 50
    mass_delete_fraction: float = 0.2
    family_delete_min: int = 20
    family_delete_fraction: float = 0.5
    pair_size_slack: int = 4096  # an encrypted copy is at most this much larger (or base64 4/3)
    max_damaged_paths: int = 100_000  # damaged paths listed in the result (all are counted)


DEFAULT_CONFIG = DetectionConfig()


class FileChange(NamedTuple):
    path: str  # relative path with "/" separators
    prev: FileFeatures | None  # None: a new file
    cur: FileFeatures


class Deletion(NamedTuple):
    path: str
    prev: FileFeatures | None


@dataclass
class BackupAssessment:
    verdict: str
    counts: dict[str, int]
    score: int
    rules: list[str]
    damaged_paths: list[str]
    clean_point: str | None
    ledger: DamageLedger

    @property
    def suspicious(self) -> bool:
        return self.verdict == SUSPICIOUS

    def summary(self) -> dict[str, Any]:
        """What the vault may see: no path, no name (the clean point is a snapshot name)."""
        return {"verdict": self.verdict, "counts": dict(sorted(self.counts.items())), "score": self.score,
                "rules": list(self.rules), "clean_point": self.clean_point}


def _norm(changes: Sequence[Any], deletions: Sequence[Any]) -> tuple[list[FileChange], list[Deletion]]:
    ch = [c if isinstance(c, FileChange) else FileChange(*c) for c in changes]
    de = [Deletion(d, None) if isinstance(d, str) else Deletion(*d) for d in deletions]
    return ch, de


def assess_backup(
    changes: Sequence[FileChange | tuple[str, FileFeatures | None, FileFeatures]],
    deletions: Sequence[Deletion | tuple[str, FileFeatures | None] | str],
    *,
    total_files: int,
    ledger: DamageLedger,
    time: datetime,
    parent: str | None,
    canaries: CanaryStatus | None = None,
    family_counts: Mapping[str, int] | None = None,
    config: DetectionConfig = DEFAULT_CONFIG,
) -> BackupAssessment:
    """Assess one backup whose changes fit in memory (tests, the evaluation harness).

    ``changes`` are the new and modified files with their previous and current sketches,
    ``deletions`` the files gone since ``parent`` (the previous snapshot's name), ``total_files``
    the number of files in this backup and ``family_counts`` the number of files per type family
    in the previous one. ``ledger`` is not modified: the updated copy is in the result. The
    agent streams the same steps through :class:`RunJudge` and :func:`assess_run`.
    """
    chg, dels = _norm(changes, deletions)
    db = sqlite3.connect(":memory:")
    try:
        judge = RunJudge(db)
        for c in chg:
            judge.add_change(c.path, c.prev, c.cur)
        judge.add_deletions(dels)
        return assess_run(judge, total_files=total_files, ledger=ledger, time=time, parent=parent,
                          canaries=canaries, family_counts=family_counts, config=config)
    finally:
        db.close()


def assess_run(
    judge: RunJudge,
    *,
    total_files: int,
    ledger: DamageLedger,
    time: datetime,
    parent: str | None,
    canaries: CanaryStatus | None = None,
    family_counts: Mapping[str, int] | None = None,
    config: DetectionConfig = DEFAULT_CONFIG,
) -> BackupAssessment:
    """The end-of-run assessment over the changes and deletions collected by ``judge``."""
    judge.finish()
    led = ledger.copy()
    led.window_days = config.window_days
    # Moves and renames with the same content are neither new files nor deletions; then
    # deletions covered by a new archive; then valuable files replaced by an unreadable sibling.
    judge.match_moves()
    counts: Counter[str] = Counter(judge.kind_counts())
    counts["archived"] += judge.cover_archives()
    counts["replaced"] += judge.pair_replacements(config.pair_size_slack)
    remaining = judge.remaining()
    counts["deleted"] += remaining

    rules: list[str] = []
    notes, note_dirs = judge.note_counts()  # ransom notes by name or content, per folder
    counts["ransom-note"] += notes
    n_damaged = judge.damaged_count()
    damaged_db = judge.damaged_database()

    # Mass deletion, overall or of one family of user files.
    mass = remaining >= max(config.mass_delete_min, config.mass_delete_fraction * max(total_files, 1))
    if family_counts:
        for fam, n in judge.remaining_by_family().items():
            if fam in USER_FAMILIES and n >= config.family_delete_min:
                mass = mass or n > config.family_delete_fraction * family_counts.get(fam, n)

    # Ledger: heal files that are healthy again, forget merely-invalid files that were deleted
    # (a document caught mid-save, then thrown away), then record this backup's findings.
    for path in list(led.entries):
        if judge.healthy_change(path):
            led.heal(path)
    for path, entry in list(led.entries.items()):
        if entry.kind == v.BECAME_INVALID and judge.deleted(path):
            led.heal(path)
    for path, kind in judge.damaged():
        led.add(path, kind, time, parent)
    for path in judge.notes():
        led.add(path, "ransom-note", time, parent, counts=False)
    if mass:
        for path in judge.remaining_paths():
            led.add(path, "deleted", time, parent, counts=False)
    if canaries is not None and canaries.tripped:
        led.add(f"\x00canary@{time.isoformat()}", "canary", time, parent, counts=False)
    led.expire(time)

    in_window = led.damaged_in_window(time)
    threshold = max(config.ledger_min_files, int(config.ledger_fraction * total_files))
    if canaries is not None and canaries.tripped:
        rules.append("canary")
        counts["canary-tripped"] += canaries.modified + canaries.deleted
    if damaged_db:
        rules.append("database-damaged")
    if note_dirs >= config.note_dirs:
        rules.append("ransom-notes")
    elif notes and (n_damaged or in_window):
        rules.append("ransom-note-with-damage")
    if in_window >= threshold:
        rules.append("damage-accumulated" if in_window > n_damaged else "damaged-files")
    if mass:
        rules.append("mass-deletion")
    if rules:
        led.open_incident(time)
    elif led.incident_open:
        rules.append("incident-open")
    counts["damaged"] = n_damaged
    counts["damaged-window"] = in_window
    score = min(100, 100 * in_window // max(threshold, 1) // 2 + 25 * note_dirs + (100 if "canary" in rules else 0)
                + (100 if damaged_db else 0) + (50 if mass else 0))
    suspicious = bool(rules)
    return BackupAssessment(
        verdict=SUSPICIOUS if suspicious else CLEAN,
        counts={k: n for k, n in counts.items() if n},
        score=score,
        rules=rules,
        damaged_paths=judge.damaged_paths(config.max_damaged_paths),
        clean_point=led.clean_point() if suspicious else None,
        ledger=led,
    )

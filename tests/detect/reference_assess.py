"""The list-based backup assessment as it was before streaming (commit b20e589), kept verbatim as
an oracle: the streaming RunJudge must give the same verdicts, counts, rules and ledger."""

from __future__ import annotations

import posixpath
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rempart.detect import verdict as v
from rempart.detect.assess import (
    CLEAN,
    DEFAULT_CONFIG,
    SUSPICIOUS,
    USER_FAMILIES,
    BackupAssessment,
    Deletion,
    DetectionConfig,
    FileChange,
)
from rempart.detect.canary import CanaryStatus
from rempart.detect.features import FileFeatures
from rempart.detect.ledger import DamageLedger
from rempart.detect.stats import NOTE_SCORE, note_name


def _fingerprint(f: FileFeatures) -> tuple[Any, ...]:
    return (f.size, f.type, f.hashes)


def _is_under(path: str, folder: str) -> bool:
    return folder == "" or path.startswith(folder + "/")


def _pair_match(old_path: str, old: FileFeatures, new_path: str, new: FileFeatures, slack: int) -> bool:
    old_name, new_name = posixpath.basename(old_path), posixpath.basename(new_path)
    if new_name.startswith(old_name) and new_name != old_name:
        return True  # "letter.docx" -> "letter.docx.locked"
    stem = old_name.rsplit(".", 1)[0]
    if stem and new_name.rsplit(".", 1)[0] == stem:
        return True  # "letter.docx" -> "letter.crypt"
    if old.size <= new.size <= old.size + slack:
        return True  # random new name, size of the original plus a header or padding
    return bool(new.encoded) and abs(new.size - (old.size * 4 + 2) // 3) <= slack


def _norm(changes: Sequence[Any], deletions: Sequence[Any]) -> tuple[list[FileChange], list[Deletion]]:
    ch = [c if isinstance(c, FileChange) else FileChange(*c) for c in changes]
    de = [Deletion(d, None) if isinstance(d, str) else Deletion(*d) for d in deletions]
    return ch, de


def reference_assess(
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
    """Assess one backup.

    ``changes`` are the new and modified files with their previous and current sketches,
    ``deletions`` the files gone since ``parent`` (the previous snapshot's name), ``total_files``
    the number of files in this backup and ``family_counts`` the number of files per type family
    in the previous one. ``ledger`` is not modified: the updated copy is in the result.
    """
    chg, dels = _norm(changes, deletions)
    led = ledger.copy()
    led.window_days = config.window_days
    counts: Counter[str] = Counter()
    verdicts = {c.path: v.compare(c.prev, c.cur) for c in chg}
    for verdict in verdicts.values():
        counts[verdict.kind] += 1

    # Moves and renames with the same content are not new files and not deletions.
    gone = {_fingerprint(d.prev): d for d in dels if d.prev is not None}
    moved_from: set[str] = set()
    for c in chg:
        if c.prev is None:
            src = gone.pop(_fingerprint(c.cur), None)
            if src is not None:
                moved_from.add(src.path)
                counts[verdicts[c.path].kind] -= 1
                verdicts[c.path] = v.FileVerdict("moved", False)
                counts["moved"] += 1
    remaining = [d for d in dels if d.path not in moved_from]

    # Deletions covered by a new archive (zip a folder, then delete it). A zip vouches for as many
    # deletions as it has members, anywhere (its own folder first); an archive whose member count
    # is unknown (7z) only for the folder it sits in.
    archives = [c for c in chg if c.prev is None and c.cur.valid and v.family(c.cur.type) in ("zip", "7z")]
    covered: set[str] = set()
    for a in archives:
        folder = posixpath.dirname(a.path)
        budget = a.cur.entries if a.cur.entries is not None else len(remaining)
        near = [d for d in remaining if _is_under(d.path, folder)]
        far = [d for d in remaining if not _is_under(d.path, folder)] if a.cur.entries is not None else []
        for d in near + far:
            if budget <= 0:
                break
            if d.path not in covered:
                covered.add(d.path)
                budget -= 1
    counts["archived"] += len(covered)
    remaining = [d for d in remaining if d.path not in covered]

    # A valuable file deleted and replaced by an unreadable sibling: encrypted and renamed.
    candidates: dict[str, list[FileChange]] = defaultdict(list)
    for c in chg:
        if (c.prev is None and verdicts[c.path].kind in (v.NEW_RANDOM, v.NEW_UNREADABLE)) or (
            c.prev is None and c.cur.valid is not True and c.cur.type not in ("text", "empty")
        ):
            candidates[posixpath.dirname(c.path)].append(c)
    replaced: list[str] = []
    for d in remaining:
        if d.prev is None or d.prev.type == "pe" or not (d.prev.valid or d.prev.type == "text"):
            continue
        pool = candidates.get(posixpath.dirname(d.path), [])
        for i, c in enumerate(pool):
            if _pair_match(d.path, d.prev, c.path, c.cur, config.pair_size_slack):
                replaced.append(d.path)
                del pool[i]
                break
    counts["replaced"] += len(replaced)
    replaced_set = set(replaced)
    remaining = [d for d in remaining if d.path not in replaced_set]
    counts["deleted"] += len(remaining)

    rules: list[str] = []
    # Ransom notes: by name or content, counted per folder.
    note_paths = [
        c.path for c in chg if c.prev is None and (note_name(posixpath.basename(c.path)) or c.cur.note >= NOTE_SCORE)
    ]
    note_dirs = {posixpath.dirname(p) for p in note_paths}
    counts["ransom-note"] += len(note_paths)

    damaged = [p for p, fv in verdicts.items() if fv.damaged] + replaced
    damaged_db = any(
        verdicts[c.path].damaged and ((c.prev is not None and c.prev.db) or c.cur.db) for c in chg
    ) or any(d.prev is not None and d.prev.db for d in dels if d.path in replaced_set)

    # Mass deletion, overall or of one family of user files.
    by_family: Counter[str] = Counter(v.family(d.prev.type) for d in remaining if d.prev is not None)
    mass = len(remaining) >= max(config.mass_delete_min, config.mass_delete_fraction * max(total_files, 1))
    if family_counts:
        for fam, n in by_family.items():
            if fam in USER_FAMILIES and n >= config.family_delete_min:
                mass = mass or n > config.family_delete_fraction * family_counts.get(fam, n)

    # Ledger: heal files that are healthy again, forget merely-invalid files that were deleted
    # (a document caught mid-save, then thrown away), then record this backup's findings.
    for c in chg:
        if c.path in led.entries and not verdicts[c.path].damaged and (c.cur.valid or c.cur.type == "text"):
            led.heal(c.path)
    for d in dels:
        entry = led.entries.get(d.path)
        if entry is not None and entry.kind == v.BECAME_INVALID:
            led.heal(d.path)
    for p in damaged:
        led.add(p, verdicts[p].kind if p in verdicts else "replaced", time, parent)
    for p in note_paths:
        led.add(p, "ransom-note", time, parent, counts=False)
    if mass:
        for d in remaining:
            led.add(d.path, "deleted", time, parent, counts=False)
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
    if len(note_dirs) >= config.note_dirs:
        rules.append("ransom-notes")
    elif note_paths and (damaged or in_window):
        rules.append("ransom-note-with-damage")
    if in_window >= threshold:
        rules.append("damage-accumulated" if in_window > len(damaged) else "damaged-files")
    if mass:
        rules.append("mass-deletion")
    if rules:
        led.open_incident(time)
    elif led.incident_open:
        rules.append("incident-open")
    counts["damaged"] = len(damaged)
    counts["damaged-window"] = in_window
    score = min(100, 100 * in_window // max(threshold, 1) // 2 + 25 * len(note_dirs) + (100 if "canary" in rules else 0)
                + (100 if damaged_db else 0) + (50 if mass else 0))
    suspicious = bool(rules)
    return BackupAssessment(
        verdict=SUSPICIOUS if suspicious else CLEAN,
        counts={k: n for k, n in counts.items() if n},
        score=score,
        rules=rules,
        damaged_paths=sorted(damaged),
        clean_point=led.clean_point() if suspicious else None,
        ledger=led,
    )

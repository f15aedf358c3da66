"""Restore after an attack: the last clean point, and per-file recovery.

* The **clean point** is the newest snapshot taken before the earliest damage of the latest
  incident: the ``clean_point`` the detector named in the first suspicious snapshot of that
  incident (or, failing that, the snapshot just before it).
* **Per-file recovery** keeps days of legitimate work: everything comes from the latest
  snapshot, except each damaged file, which comes from its own last good version (the snapshot
  before the one that first recorded it as damaged), and files deleted by suspicious backups,
  which come back from the snapshot before their deletion. Files the attack created (encrypted
  copies, ransom notes) are left out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from rempart.core.errors import UserError
from rempart.repository.reader import ReadSession
from rempart.repository.repo import Repository
from rempart.snapshot.diff import diff_trees
from rempart.snapshot.restorer import TreeReader
from rempart.snapshot.tree import KIND_DIR, Node


@dataclass(frozen=True)
class SnapInfo:
    name: str
    time: str
    tree: bytes
    verdict: str
    clean_point: str | None


def timeline(repo: Repository, damaged: list[str] | None = None) -> list[SnapInfo]:
    """The readable snapshots, oldest first (damaged ones: see ``Repository.list_snapshots``)."""
    out = []
    for name, snap in repo.list_snapshots(damaged):
        det: Any = snap.plain.get("detection") or {}
        out.append(SnapInfo(name, str(snap.plain.get("time", "")), snap.tree,
                            str(det.get("verdict", "unknown")), det.get("clean_point")))
    return sorted(out, key=lambda s: s.time)


def last_clean(snaps: list[SnapInfo]) -> tuple[SnapInfo, list[SnapInfo]]:
    """(clean point, the snapshots after it) for the latest incident."""
    bad = [i for i, s in enumerate(snaps) if s.verdict == "suspicious"]
    if not bad:
        raise UserError("no snapshot is flagged suspicious: use 'latest' (or name a snapshot)")
    first = bad[-1]
    while first > 0 and snaps[first - 1].verdict == "suspicious":
        first -= 1
    named = snaps[first].clean_point
    idx = next((i for i, s in enumerate(snaps) if s.name == named), first - 1)
    idx = min(idx, first - 1)
    if idx < 0:
        raise UserError("every snapshot of this repository was taken after the damage began")
    return snaps[idx], snaps[idx + 1 :]


@dataclass
class RecoveryPlan:
    base: SnapInfo  # everything not listed below comes from here (the latest snapshot)
    clean: SnapInfo
    #: path -> (snapshot it comes from, node): damaged or deleted files restored from before
    replaced: dict[PurePosixPath, tuple[str, Node]] = field(default_factory=dict)
    #: paths left out: damaged with no good version (files the attack created)
    dropped: list[PurePosixPath] = field(default_factory=list)


def plan_per_file(repo: Repository, session: ReadSession, snaps: list[SnapInfo]) -> RecoveryPlan:
    clean, after = last_clean(snaps)
    reader = TreeReader(session)
    plan = RecoveryPlan(base=snaps[-1], clean=clean)
    chain = [clean, *after]
    damaged_in: dict[PurePosixPath, int] = {}
    for i, s in enumerate(chain[1:], start=1):
        snap, _ = repo.load_snapshot(s.name)
        damaged = session.snapshot_meta(snap).get("damaged") or []
        for p in damaged if isinstance(damaged, list) else []:
            damaged_in.setdefault(PurePosixPath(str(p)), i)
    for path, i in sorted(damaged_in.items()):
        good = reader.find(chain[i - 1].tree, path)
        if good is not None and good.type != KIND_DIR:
            plan.replaced[path] = (chain[i - 1].name, good)
        else:
            plan.dropped.append(path)
    for prev, cur in itertools.pairwise(chain):
        if cur.verdict != "suspicious":
            continue
        for change in diff_trees(reader, prev.tree, cur.tree):
            p = PurePosixPath(change.path.rstrip("/"))
            if change.kind == "-" and not change.path.endswith("/") and p not in plan.replaced:
                if reader.find(plan.base.tree, p) is None:
                    node = reader.find(prev.tree, p)
                    if node is not None:
                        plan.replaced[p] = (prev.name, node)
    return plan

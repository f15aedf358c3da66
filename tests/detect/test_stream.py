"""Streaming assessment: same results as the list-based oracle, bounded memory in the agent."""

from __future__ import annotations

import json
import random
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reference_assess import reference_assess

from rempart.agent.detection import RUN_DB, AgentDetection
from rempart.detect.assess import assess_backup
from rempart.detect.canary import CanaryStatus
from rempart.detect.features import FileFeatures
from rempart.detect.ledger import DamageLedger
from rempart.snapshot.cache import StateCache

T = datetime(2026, 3, 2, 9, tzinfo=UTC)
FOLDERS = ["", "Docs", "Docs/Old", "Docs/Old/sub", "Img", "Img/2026", "Db", "Notes"]
EXTS = [".docx", ".pdf", ".jpg", ".txt", ".dat", ".db", ".zip", ".dcm", ".locked", ""]


def _feats(r: random.Random, kind: str, size: int | None = None, ext: str = ".docx") -> FileFeatures:
    size = size if size is not None else r.choice([900, 4000, 4000, 70_000, 200_000])
    hashes = tuple(r.randrange(4) for _ in range(3))  # few values: fingerprints collide (moves)
    if kind == "valid":
        return FileFeatures("docx", size, ext, valid=True, hashes=hashes)
    if kind == "zip":
        return FileFeatures("zip", size, ".zip", valid=True, hashes=hashes, entries=r.choice([1, 3, 40]))
    if kind == "7z":
        return FileFeatures("7z", size, ".7z", valid=True, hashes=hashes)
    if kind == "invalid":
        return FileFeatures("pdf", size, ext, valid=False, why="x", random=False, hashes=hashes)
    if kind == "random":
        return FileFeatures("data", size, ext, random=True, entropy=799, chi2=200, hashes=hashes)
    if kind == "encoded":
        return FileFeatures("encoded", size, ext, random=False, encoded="b64", hashes=hashes)
    if kind == "text":
        return FileFeatures("text", size, ".txt", random=False, utf8=True, hashes=hashes)
    if kind == "note":
        return FileFeatures("text", size, ".txt", random=False, utf8=True, hashes=hashes, note=5)
    if kind == "data":
        return FileFeatures("data", size, ".dat", db=True, random=False, zr=(30, 30, 30), hashes=hashes)
    if kind == "zeros":
        return FileFeatures("zeros", size, ext, hashes=hashes)
    return FileFeatures("pe", size, ".exe", valid=True, hashes=hashes)


KINDS = ["valid", "valid", "valid", "zip", "7z", "invalid", "random", "encoded", "text", "note", "data", "zeros", "pe"]


def _scenario(seed: int) -> tuple[list[Any], list[Any], DamageLedger, int]:
    r = random.Random(seed)
    changes: list[Any] = []
    deletions: list[Any] = []
    used: set[str] = set()

    def path() -> str:
        while True:
            folder = r.choice(FOLDERS)
            name = f"{r.choice(['f', 'letter', 'README_DECRYPT', 'x'])}{r.randrange(60)}{r.choice(EXTS)}"
            p = f"{folder}/{name}" if folder else name
            if p not in used:
                used.add(p)
                return p

    for _ in range(r.randrange(0, 120 if seed % 2 == 0 else 30)):  # deleted files
        deletions.append((path(), None if r.random() < 0.05 else _feats(r, r.choice(KINDS))))
    for _ in range(r.randrange(0, 150)):
        roll = r.random()
        if roll < 0.15 and deletions:  # a move: the fingerprint of a deleted file
            prev = r.choice(deletions)[1]
            if prev is not None:
                changes.append((path(), None, prev))
                continue
        if roll < 0.3 and deletions and seed % 2 == 0:  # a sibling of a deleted file: renamed copy
            old, prev = r.choice(deletions)
            sibling = old + r.choice([".locked", ""]) + "x"
            if prev is not None and sibling not in used:
                used.add(sibling)
                changes.append((sibling, None,
                                _feats(r, r.choice(["random", "encoded", "invalid"]), prev.size + r.choice([0, 16, 9000]))))
                continue
        prev = None if r.random() < 0.5 else _feats(r, r.choice(KINDS))
        quiet = seed % 2 and r.random() < 0.97  # half the scenarios are mostly benign
        changes.append((path(), prev, _feats(r, "valid" if quiet else r.choice(KINDS))))
    ledger = DamageLedger()
    for i, (p, *_rest) in enumerate(r.sample(changes + deletions, min(seed % 4 if seed % 2 == 0 else 0, len(changes) + len(deletions)))):
        ledger.add(p, r.choice(["became-invalid", "became-random"]), T - timedelta(days=i * 5), f"s{i}")
    if seed % 2 == 0:
        ledger.add("gone-long-ago.docx", "became-invalid", T - timedelta(days=2), "s0")
    return changes, deletions, ledger, r.choice([100, 1000, 5000])


def _same(a: Any, b: Any) -> None:
    assert (a.verdict, a.counts, a.score, a.rules, a.clean_point) == (b.verdict, b.counts, b.score, b.rules, b.clean_point)
    assert sorted(a.damaged_paths) == sorted(b.damaged_paths)
    assert a.ledger.to_dict() == b.ledger.to_dict()


def test_streaming_assessment_matches_the_list_based_oracle() -> None:
    suspicious = 0
    for seed in range(150):
        changes, deletions, ledger, total = _scenario(seed)
        families = {"zip": 30, "pdf": 40, "text": 10, "data": 5}
        canaries = CanaryStatus(planted=2, modified=1) if seed % 17 == 0 else None
        kw: dict[str, Any] = dict(total_files=total, ledger=ledger, time=T, parent="s9", canaries=canaries,
                                  family_counts=families if seed % 3 else None)
        new = assess_backup(changes, deletions, **kw)
        _same(new, reference_assess(changes, deletions, **kw))
        suspicious += new.suspicious
    assert 20 < suspicious < 140  # the scenarios exercise both outcomes


def _fill_cache(cache: StateCache, rows: list[tuple[str, FileFeatures | None]]) -> None:
    for i, (p, f) in enumerate(rows):
        cache.record(p, f.size if f else 1, i, i, i, [bytes(32)], f.to_dict() if f else None, 0.0)


def test_agent_streams_the_run_to_disk_with_the_same_verdicts(tmp_path: Path) -> None:
    r = random.Random(5)
    changes, deletions, ledger, total = _scenario(11)
    root = str(tmp_path / "src")
    changes = [(f"{root}/{p}", prev, cur) for p, prev, cur in changes]
    deletions = [(f"{root}/{p}", f) for p, f in deletions]
    ledger = DamageLedger({f"{root}/{p}": e for p, e in ledger.entries.items()})
    cache = StateCache(tmp_path / "state")
    try:
        _fill_cache(cache, deletions + [(p, prev) for p, prev, _ in changes if prev is not None])
        cache.commit("s9", {"detection_ledger": json.dumps(ledger.to_dict())})
        _fill_cache(cache, [(p, cur) for p, _prev, cur in changes])  # this run: deletions are absent
        det = AgentDetection(tmp_path / "state")
        det.spill = 7  # rows reach the run database from the three threads, several times each
        order = list(changes)
        r.shuffle(order)  # arrival order differs between threads; the verdicts must not

        def feed(part: list[Any]) -> None:
            for p, prev, cur in part:
                det.changed(p, prev.to_dict() if prev else None, cur.to_dict(), prev is None)

        threads = [threading.Thread(target=feed, args=(order[i::3],)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (tmp_path / "state" / RUN_DB).exists()
        summary, damaged = det.assess(cache, total, "2026-03-02T09:00:00Z")
        assert not (tmp_path / "state" / RUN_DB).exists()
    finally:
        cache.close()
    families: dict[str, int] = {}
    for _p, f in deletions + [(p, prev) for p, prev, _ in changes if prev is not None]:
        if f is not None:
            fam = {"docx": "zip"}.get(f.type, f.type)
            families[fam] = families.get(fam, 0) + 1
    ref = reference_assess(changes, deletions, total_files=total, ledger=ledger, time=T, parent="s9",
                           family_counts=families)
    assert summary["verdict"] == ref.verdict and summary["rules"] == ref.rules
    assert summary["counts"] == dict(sorted(ref.counts.items())) and summary["score"] == ref.score
    assert sorted(damaged) == sorted(ref.damaged_paths)
    assert summary["changed"] == len(changes) and summary["deleted"] == len(deletions)
    assert json.loads(det.ledger_state or "{}") == json.loads(json.dumps(ref.ledger.to_dict()))


def test_agent_memory_does_not_grow_with_the_number_of_changes(tmp_path: Path) -> None:
    det = AgentDetection(tmp_path)
    det.spill = 500  # rows wait in memory up to this many, then go to the run database
    cur = FileFeatures("data", 3000, ".bin", random=True, entropy=799, chi2=250, hashes=(1, 2, 3)).to_dict()

    def peak(start: int, n: int) -> int:
        tracemalloc.start()
        for i in range(start, start + n):
            det.changed(f"/data/d{i // 500}/file{i}.bin", None, cur, True)
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    small = peak(0, 1_000)
    large = peak(1_000, 20_000)  # 20 times more changes
    # the old list kept ~0.5 KiB per change (10 MiB here); now memory stops at the spill bound
    assert large < 2 * small + 1_000_000, (small, large)
    det._close_run()

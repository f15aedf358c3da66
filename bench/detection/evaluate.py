"""Detection evaluation: weeks of a simulated practice with attacks and benign surges.

    python bench/detection/evaluate.py --quick            # CI size, < 60 s on 2 cores
    python bench/detection/evaluate.py                    # full size
    python bench/detection/evaluate.py --quick --json out.json

Each scenario copies a generated practice folder, plants canaries, and runs days of normal work
(``datagen.mutate_day``, plus documents caught mid-save) with three backups a day (08:00, 13:00,
19:00). An attack or benign surge is applied before the 19:00 backup of its day (started at
14:00); the slow attack encrypts a few files every night. Every backup is assessed as the
archiver will (see simulate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datagen
from detection import attacks as at
from detection import formats as fm
from detection.simulate import Backuper, Entry, Timing
from rempart.detect.canary import canary_files

T0 = datetime(2026, 1, 5, tzinfo=UTC)
SLOTS = (8, 13, 19)
CANARY_DIRS = ("Practice/Documents/Letters", "Practice/Documents/Invoices", "Practice/Imaging/Photos", "Practice/Exports")
CANARY_SEED = b"bench canary seed"
SLOW = {"slow-3-files-a-night": 3, "slow-1-file-a-night": 1}  # in place, canaries avoided


@dataclass(frozen=True)
class Config:
    size_mb: int
    attack_days: int
    slow_days: int
    benign_days: int
    baseline_days: int
    seed: int = 1


QUICK = Config(size_mb=16, attack_days=3, slow_days=8, benign_days=4, baseline_days=8)
FULL = Config(size_mb=200, attack_days=4, slow_days=20, benign_days=20, baseline_days=40)


@dataclass
class Result:
    scenario: str
    kind: str
    detected: bool
    backups_to_alert: int | None
    hours_to_alert: float | None
    damaged_at_alert: int
    damaged_pct: float
    files: int
    clean_point_ok: bool | None
    clean_point_exact: bool | None
    rules: str
    false_alerts: int
    days: int
    flagged: int = 0  # files judged damaged while no attack was running (e.g. a letter caught mid-save)
    legit_encrypted: int = 0  # files classified as encrypted by their own format


def _when(day: int, slot: int) -> datetime:
    return T0 + timedelta(days=day, hours=SLOTS[slot])


def _stat_keys(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _d, files in os.walk(root):
        for n in files:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")] = (st.st_mtime_ns, st.st_size)
    return out


def _plant_canaries(root: Path) -> dict[str, str]:
    planted = {}
    for folder in CANARY_DIRS:
        if not (root / folder).is_dir():
            continue
        for c in canary_files(folder, CANARY_SEED):
            (root / folder / c.name).write_bytes(c.content)
            planted[f"{folder}/{c.name}"] = blake3.blake3(c.content).hexdigest()
    return planted


class Base:
    """The generated practice, backed up once; each scenario starts from a copy of it."""

    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.dir = workdir / "base"
        datagen.generate(self.dir, cfg.size_mb, cfg.seed)
        self.canaries = _plant_canaries(self.dir)
        b = Backuper(self.dir, dict(self.canaries))
        b.backup(T0 - timedelta(hours=1), count_timing=False)
        self.index: dict[str, Entry] = b.index

    def copy(self, dest: Path) -> Backuper:
        shutil.copytree(self.dir, dest)
        b = Backuper(dest, dict(self.canaries))
        b.adopt(self.index)
        return b


def _glitch(ctx: at.Ctx, day: int, slot: int, state: dict) -> None:
    """Every third day a letter is being saved during the 08:00 backup, finished by 13:00."""
    if day % 3 == 1 and slot == 0:
        letters = sorted((ctx.root / datagen.LETTERS).rglob("lettre_*.docx"))
        if letters:
            path = ctx.r.rng.choice(letters)
            full = datagen._letter(ctx.r)
            path.write_bytes(full[: len(full) // 2])
            state["glitch"] = (path, full)
    elif slot == 1 and "glitch" in state:
        path, full = state.pop("glitch")
        if path.exists():
            path.write_bytes(full)


def run(name: str, kind: str, base: Base, cfg: Config, work: Path, *, event_day: int = 2) -> tuple[Result, Timing]:
    root = work / name.replace("/", "_")
    b = base.copy(root)
    b.pipeline = kind == "benign"
    ctx = at.Ctx(root, fm.Rand(f"{name}-{cfg.seed}"), canaries=set(base.canaries))
    days = cfg.slow_days if name.startswith("slow-") else cfg.attack_days if kind == "attack" else (
        cfg.baseline_days if name == "daily-activity-only" else cfg.benign_days)
    damaged_at: dict[str, int] = {}  # ground truth: path -> index of the first backup that saw it damaged
    attack_start: datetime | None = None
    alert_idx: int | None = None
    alert = None
    false_alerts = 0
    state: dict = {}
    files_at_attack = 0
    flagged = legit = 0
    for day in range(days):
        for slot in range(len(SLOTS)):
            _glitch(ctx, day, slot, state)
            if slot == 1:
                before = _stat_keys(root)
                datagen.mutate_day(root, day, cfg.seed)
                after = _stat_keys(root)
                ctx.recent.update({p: day for p, k in after.items() if before.get(p) != k})
            hit: list[str] = []
            if kind == "attack" and name.startswith("slow-") and day >= event_day and slot == 0:
                hit = at.slow_step(ctx, day, per_day=SLOW[name])
                attack_start = attack_start or _when(day, 0) - timedelta(hours=6)
            elif day == event_day and slot == 2 and name not in SLOW:
                action = at.ATTACKS.get(name) or at.BENIGN[name]
                hit = action(ctx)
                if kind == "attack":
                    attack_start = _when(day, 1) + timedelta(hours=1)
            idx = len(b.snapshots)
            if hit and not files_at_attack:
                files_at_attack = len(b.index)
            for p in hit:
                damaged_at.setdefault(p, idx)
            res = b.backup(_when(day, slot))
            legit += res.counts.get("legit-encrypted", 0)
            if attack_start is None:
                flagged += res.counts.get("damaged", 0)
            if res.suspicious and "incident-open" not in res.rules:
                if kind == "attack" and attack_start is not None and alert is None:
                    alert, alert_idx = res, idx
                elif kind == "benign" or attack_start is None:
                    false_alerts += 1
                    b.ledger.acknowledge()  # the operator marks it a false positive
            if alert is not None:
                break
        if alert is not None:
            break
    files = files_at_attack or len(b.index)
    timing = b.timing
    if alert is None or alert_idx is None or attack_start is None:
        return Result(name, kind, False, None, None, len(damaged_at), round(100 * len(damaged_at) / max(files, 1), 2),
                      files, None, None, "", false_alerts, days, flagged, legit), timing
    first_damage = min(damaged_at.values()) if damaged_at else alert_idx
    cp = alert.clean_point
    cp_idx = int(cp[1:]) if cp else None
    at_alert = sum(1 for i in damaged_at.values() if i <= alert_idx)
    return Result(
        name, kind, True,
        backups_to_alert=alert_idx - first_damage + 1,
        hours_to_alert=round((_when(*divmod(alert_idx - 1, len(SLOTS))) - attack_start).total_seconds() / 3600, 1),
        damaged_at_alert=at_alert, damaged_pct=round(100 * at_alert / max(files, 1), 2), files=files,
        clean_point_ok=cp_idx is not None and cp_idx < first_damage,
        clean_point_exact=cp_idx == first_damage - 1,
        rules=",".join(alert.rules), false_alerts=false_alerts, days=days, flagged=flagged, legit_encrypted=legit,
    ), timing


def evaluate(cfg: Config, workdir: Path, only: list[str] | None = None) -> tuple[list[Result], dict]:
    t_start = time.perf_counter()
    base = Base(cfg, workdir)
    results = []
    scenarios = [(n, "attack") for n in at.ATTACKS] + [(n, "attack") for n in SLOW] + [(n, "benign") for n in at.BENIGN]
    total = Timing()
    benign = Timing()
    for name, kind in scenarios:
        if only and name not in only:
            continue
        work = workdir / "runs"
        work.mkdir(exist_ok=True)
        t_run = time.perf_counter()
        res, timing = run(name, kind, base, cfg, work)
        print(f"# {name}: {'detected' if res.detected else 'no alert'}, {res.false_alerts} false, "
              f"{res.days} d, {time.perf_counter() - t_run:.0f} s", file=sys.stderr, flush=True)
        total.add(timing)
        if kind == "benign":
            benign.add(timing)
        results.append(res)
        shutil.rmtree(work / name.replace("/", "_"), ignore_errors=True)
    meta = {
        "config": asdict(cfg),
        "seconds": round(time.perf_counter() - t_start, 1),
        "read_hash_s": round(total.read_hash, 3),
        "detect_s": round(total.detect, 3),
        "changed_mib": round(total.bytes_read / 2**20, 1),
        "changed_files": total.files_read,
        "base_files": len(base.index),
        "benign_read_hash_s": round(benign.read_hash, 3),
        "benign_pipeline_s": round(benign.pipeline, 3),
        "benign_detect_s": round(benign.detect, 3),
        "benign_changed_mib": round(benign.bytes_read / 2**20, 1),
        "benign_changed_files": benign.files_read,
    }
    return results, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1, help="run seeds SEED..SEED+N-1 and add a worst-case table")
    p.add_argument("--only", action="append")
    p.add_argument("--json", type=Path)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    base_cfg = QUICK if args.quick else FULL
    from detection.report import render, render_seeds

    per_seed: dict[int, list[Result]] = {}
    out: list[str] = []
    for seed in range(args.seed, args.seed + args.seeds):
        cfg = Config(**{**asdict(base_cfg), "seed": seed})
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            results, meta = evaluate(cfg, Path(tmp), args.only)
        per_seed[seed] = results
        out.append(f"### seed {seed}\n\n{render(results, meta)}\n")
        print(out[-1], flush=True)
    if args.seeds > 1:
        print(render_seeds(per_seed))
    if args.json:
        args.json.write_text(json.dumps(
            {str(s): [asdict(r) for r in rs] for s, rs in per_seed.items()}, indent=1))
    ok = all(
        r.detected and r.clean_point_ok and not r.false_alerts if r.kind == "attack" else not r.false_alerts
        for rs in per_seed.values() for r in rs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

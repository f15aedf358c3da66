"""Detection overhead on a real initial backup: ``rempart backup`` with and without
``--no-detect``, each run into a fresh repository, interleaved, reporting CPU (user+sys of the
backup process) and wall time, with medians.

Several code versions can be compared in the same run (a baseline worktree made before a change,
and the working tree), each given as ``LABEL=SRC`` where SRC is a ``src`` folder put first on
``PYTHONPATH``; the installed venv's ``rempart`` entry point runs them all.

    .venv/bin/python bench/detection/overhead.py /tmp/h4/data --rounds 5 \
        --version base=/tmp/base-det/src --version new=src

The repository and state folders go under ``--workdir`` (default: a temporary folder in /tmp)
and are deleted after each run. The data folder is read once beforehand to warm the page cache.

``--in-process`` measures only detection's own work instead, which the load of a shared machine
disturbs far less than a whole backup: each version, in its own interpreter, reads every file
into memory, then (timed, thread CPU time) captures the planned ranges from 64 KiB chunks as the
archiver does, extracts the features, encodes the sketch as the archiver does, reports the change
to the agent adapter, and runs the end-of-run assessment. Best of ``--reps``, per round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSPHRASE = "bench-passphrase-not-secret"  # throwaway repositories


def _rempart() -> str:
    exe = Path(sys.executable).parent / "rempart"
    if not exe.exists():
        raise SystemExit("run with the project venv's python (.venv/bin/python)")
    return str(exe)


def _warm(data: Path) -> None:
    for root, _dirs, files in os.walk(data):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU s user+sys, wall s, exit code) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 30):  # 30: detection alert (still a complete backup)
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        raise SystemExit(f"{argv[0]} exited {proc.returncode}")
    return cpu, wall, proc.returncode


def one_backup(src: Path, data: Path, workdir: Path, detect: bool) -> tuple[float, float]:
    home = Path(tempfile.mkdtemp(prefix="ovh-", dir=workdir))
    try:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(src.resolve()),
            "REMPART_KIT_PASSPHRASE": PASSPHRASE,
            "REMPART_STATE_DIR": str(home / "state"),
            "REMPART_KDF_TEST": "1",  # cheap KDF for init; the backup does not derive keys
        })
        exe = _rempart()
        repo = home / "repo"
        _run([exe, "-r", str(repo), "init", "--kit", str(home / "kit")], env)
        argv = [exe, "-q", "--json", "-r", str(repo), "backup", str(data)]
        if not detect:
            argv.append("--no-detect")
        cpu, wall, _ = _run(argv, env)
        return cpu, wall
    finally:
        shutil.rmtree(home, ignore_errors=True)


_IN_PROCESS = r"""
import os, sys, tempfile, time, json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from rempart.agent.detection import AgentDetection
from rempart.detect.assess import assess_run
from rempart.detect.ledger import DamageLedger
from rempart.snapshot.pipeline import collect_samples
root, reps = sys.argv[1], int(sys.argv[2])
enc = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # the archiver's encoder
files = []
for dp, dn, fn in os.walk(root):
    dn.sort()
    for n in sorted(fn):
        p = os.path.join(dp, n)
        with open(p, "rb") as f:
            files.append((p, n, f.read()))
best = None
for _ in range(reps):
    det = AgentDetection(Path(tempfile.mkdtemp()))
    t0 = time.thread_time()
    for p, n, data in files:
        plan = det.sample_plan(len(data))
        samples = []
        view = memoryview(data)
        for off in range(0, len(data), 65536):
            if plan:
                collect_samples(plan, samples, off, view[off : off + 65536])
        feats = det.features(n, len(data), samples)
        enc(feats)
        det.changed(p, None, feats, True)
    assess_run(det._run(), total_files=len(files), ledger=DamageLedger(), time=datetime.now(timezone.utc),
               parent=None, family_counts=Counter())
    t = time.thread_time() - t0
    det._close_run()
    best = t if best is None else min(best, t)
print(json.dumps({"cpu": best, "files": len(files)}))
"""


def in_process(src: Path, data: Path, reps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    out = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(data), str(reps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(json.loads(out)["cpu"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--version", action="append", default=[], metavar="LABEL=SRC",
                    help="code version to measure (repeatable); default: this checkout's src")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the --no-detect runs")
    ap.add_argument("--no-detect-of", default="", metavar="LABELS",
                    help="comma-separated versions whose --no-detect runs are made (default: all)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--in-process", action="store_true", help="time detection's own work only (see above)")
    ap.add_argument("--reps", type=int, default=3, help="--in-process: repetitions per round (best kept)")
    args = ap.parse_args()
    versions = [tuple(v.split("=", 1)) for v in args.version] or [("this", str(Path(__file__).parents[2] / "src"))]
    if args.in_process:
        det_cpu: dict[str, list[float]] = {label: [] for label, _ in versions}
        for r in range(args.rounds):
            for label, src in versions if r % 2 == 0 else list(reversed(versions)):
                det_cpu[label].append(in_process(Path(src), args.data, args.reps))
                print(f"round {r + 1} {label}: detection cpu {det_cpu[label][-1]:.3f} s", file=sys.stderr, flush=True)
        print(json.dumps({label: {"cpu": [round(c, 3) for c in v], "cpu_median": round(statistics.median(v), 3)}
                          for label, v in det_cpu.items()}, indent=1))
        return 0
    _warm(args.data)
    variants = [(f"{label} detect", Path(src), True) for label, src in versions]
    if not args.no_baseline:
        only = set(filter(None, args.no_detect_of.split(",")))
        variants += [(f"{label} --no-detect", Path(src), False) for label, src in versions
                     if not only or label in only]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for name, src, detect in order:
            cpu, wall = one_backup(src, args.data, args.workdir, detect)
            results[name].append((cpu, wall))
            print(f"round {r + 1} {name}: cpu {cpu:.2f} s wall {wall:.2f} s", file=sys.stderr, flush=True)
    summary = {}
    for name, runs in results.items():
        cpus = [c for c, _ in runs]
        walls = [w for _, w in runs]
        summary[name] = {"cpu": [round(c, 2) for c in cpus], "wall": [round(w, 2) for w in walls],
                         "cpu_median": round(statistics.median(cpus), 2),
                         "wall_median": round(statistics.median(walls), 2)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--version", action="append", default=[], metavar="LABEL=SRC",
                    help="code version to measure (repeatable); default: this checkout's src")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the --no-detect runs")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    versions = [tuple(v.split("=", 1)) for v in args.version] or [("this", str(Path(__file__).parents[2] / "src"))]
    _warm(args.data)
    variants = [(f"{label} detect", Path(src), True) for label, src in versions]
    if not args.no_baseline:
        variants += [(f"{label} --no-detect", Path(src), False) for label, src in versions]
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

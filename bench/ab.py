"""Before/after of rempart itself: two checkouts, the same data, runs interleaved (a script, not a test).

    python bench/ab.py --data DIR --src before=/tmp/base --src after=/work/main [--runs 3] [--memory]

For each run, and each source in turn (the order alternates between runs), with the page cache
dropped before every measured command (root; else warm):

1. ``rempart init`` then a first ``rempart backup`` of DIR into a fresh repository (timed);
2. ``rempart restore latest`` of it into a folder that did not exist (timed). The run's folder
   is then deleted, so the next source's backup, not its restore, follows that deletion
   (creating files right after deleting a large tree is slow on ext4); the backup's ~14 s of
   a 2 GiB folder lie between them, not nothing.

With ``--memory`` each source gets one more backup and restore whose memory is sampled (the peak
of the summed PSS of the process tree, every 20 ms; see ``bench_measure``) and whose times are
not counted. Prints each run and the medians per source. ``--data`` is a folder to back up, e.g.
one made by ``python bench/datagen.py generate DIR --size-mb 2048``.

Session 9 used it to judge its changes (docs/benchmarks.md, "Summary (session 9)").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_measure import can_drop_caches, checkout, drop_caches, run_measured  # noqa: E402

PASS = "benchmark passphrase, not secret"
#: the measured processes compile nothing (each source is byte-compiled first) and use the real KDF
BASE_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "REMPART_KDF_TEST")}


def _rempart(src: Path, work: Path, *args: str, sample: bool = False, cold: bool = True) -> tuple[float, float, int]:
    """(wall s, CPU s, peak summed PSS MiB or 0) of one rempart command run from ``src``."""
    env = {**BASE_ENV, "PYTHONPATH": str(src), "REMPART_KIT_PASSPHRASE": PASS,
           "REMPART_STATE_DIR": str(work / "state")}
    if cold:
        drop_caches()
    m = run_measured([sys.executable, "-m", "rempart.cli.main", "-q", *args], env=env, sample=sample,
                     ok_codes=(0, 30))  # 30: a detection alert, still a complete backup
    return m.wall_s, m.cpu_s, m.tree_pss_bytes // 2**20


def one_run(name: str, src: Path, data: Path, top: Path, tag: str, *, sample: bool, cold: bool) -> dict[str, float]:
    work = top / f"{name}-{tag}"
    work.mkdir()
    repo, kit = str(work / "repo"), str(work / "kit")
    _rempart(src, work, "-r", repo, "init", "--kit", kit, cold=False)
    out: dict[str, float] = {}
    for op, args in (("backup", ("-r", repo, "backup", str(data))),
                     ("restore", ("-r", repo, "restore", "latest", "--target", str(work / "out"), "--kit", kit))):
        wall, cpu, pss = _rempart(src, work, *args, sample=sample, cold=cold)
        out[f"{op}_s"], out[f"{op}_cpu_s"] = round(wall, 2), round(cpu, 2)
        if sample:
            out[f"{op}_pss_mib"] = pss
    shutil.rmtree(work)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the folder to back up")
    ap.add_argument("--src", action="append", required=True, metavar="NAME=DIR", help="a checkout (twice or more)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="one more sampled run per source for peak PSS")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (needs ~3x the data size)")
    a = ap.parse_args()
    sources = [checkout(s) for s in a.src]
    cold = can_drop_caches()
    for _, src in sources:  # compiled once, so that no measured process compiles its modules
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], env=BASE_ENV, check=True)
    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="rempart-ab-", dir=a.workdir))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in sources}
    try:
        print(f"page cache: {'cold' if cold else 'warm (not root)'}; data: {a.data}")
        for i in range(a.runs):
            for name, src in sources if i % 2 == 0 else list(reversed(sources)):
                r = one_run(name, src, a.data.resolve(), top, f"run{i}", sample=False, cold=cold)
                results[name].append(r)
                print(f"run {i + 1} {name:>10}: " + "  ".join(f"{k} {v}" for k, v in r.items()), flush=True)
        for name, src in sources if a.memory else []:
            r = one_run(name, src, a.data.resolve(), top, "memory", sample=True, cold=cold)
            print(f"memory {name:>10}: " + "  ".join(f"{k} {v}" for k, v in r.items() if "pss" in k), flush=True)
        for name, runs in results.items():
            keys = runs[0].keys()
            print(f"median {name:>10}: " + "  ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in keys))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

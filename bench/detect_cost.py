"""Per-file CPU cost of detection in the archiver's reading processes (a script, not a test).

    python bench/detect_cost.py --data DIR [--src NAME=CHECKOUT ...] [--repeat 5]

For every file of DIR (e.g. one made by ``python bench/datagen.py generate DIR --size-mb 2048``)
the sampled ranges are read once into memory; then, on one thread, each source's
``rempart.detect.judge.read_verdict`` runs over all of them, with the encoding the reading
process applies to its result and the decoding the backup process applies to the verdict:
JSON both ways before session 11, ``FileFeatures.to_json`` and ``marshal`` since. Prints the
best of ``--repeat`` passes per source, in seconds and µs per file. Each source runs in a
process of its own (its ``src`` first on ``sys.path``); without ``--src``, this checkout.
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(data: str, repeat: int) -> None:
    from rempart.detect.judge import read_verdict
    from rempart.detect.sampling import sample_plan

    items = []
    for dirpath, _, names in os.walk(data):
        for name in names:
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                samples = []
                for off, n in sample_plan(size):
                    f.seek(off)
                    samples.append((off, f.read(n)))
            items.append((name, size, samples))

    def one(name: str, size: int, samples: list[tuple[int, bytes]]) -> None:
        feats, judged = read_verdict(name, size, samples)
        if isinstance(feats, str):  # session 11 on: JSON text built directly, verdict via marshal
            feats.encode()
            marshal.loads(marshal.dumps(judged))
        else:  # before: both as canonical JSON, the verdict parsed back by the backup process
            json.dumps(feats, sort_keys=True, separators=(",", ":")).encode()
            json.loads(json.dumps(judged, sort_keys=True, separators=(",", ":")).encode())

    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for item in items:
            one(*item)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"files": len(items), "best_s": round(best, 3), "us_per_file": round(best / len(items) * 1e6, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--src", action="append", default=[], metavar="NAME=CHECKOUT")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        measure(a.data, a.repeat)
        return
    for spec in a.src or [f"current={HERE.parent}"]:
        name, _, checkout = spec.partition("=")
        env = {**os.environ, "PYTHONPATH": str(Path(checkout) / "src")}
        out = subprocess.run([sys.executable, __file__, "--child", "--data", a.data, "--repeat", str(a.repeat)],
                             env=env, check=True, capture_output=True, text=True).stdout
        print(f"{name}: {out.strip()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak memory of a backup as the number of files grows (issue 2: "bounded, not proportional").

Generates folders of N small files (deterministic, 200 B - 4 KiB each, 500 per folder) and
measures, for each N and each tool, the peak RSS of the process tree (see bench_measure) and the
wall time of a first backup and of a second backup with nothing changed. Fresh repository per N.

    python bench/memory_scale.py --files 10000,200000 --tools rempart,restic --markdown out.md

To compare two versions of rempart in the same run, give each source tree a label: with
``--src base=/tmp/base/src --src new=/work/main/src`` every rempart tool runs once per label
(``rempart-nodetect@base``, ...) with PYTHONPATH pointing at that tree. ``--max-files
restic=200000`` skips a tool above a file count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_measure import CommandTimedOut, can_drop_caches, median, prepare_cache, run_measured, tree_size
from bench_tools import detection_available, make_tool

MIB = 2**20
WORDS = [w.encode() for w in "patient dent carie couronne implant radio facture rendez-vous "
         "détartrage bridge prothèse anesthésie ordonnance mutuelle orthodontie extraction".split()]


def make_small_files(root: Path, count: int, seed: int) -> int:
    """``count`` files of 200 B - 4 KiB (half text, half random bytes) in folders of 500."""
    rng = random.Random(f"small-{seed}-{count}")
    total = 0
    for i in range(count):
        d = root / f"d{i // 500:04d}"
        if i % 500 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200, 4096)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = b" ".join(rng.choice(WORDS) for _ in range(size // 8))[:size]
        (d / f"f{i:06d}.txt").write_bytes(data)
        total += len(data)
    return total


def measure(tool_name: str, data: Path, home: Path, cache: str, runs: int, timeout: float,
            srcs: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("initial", "nochange"):
        out[phase] = {"wall_s": [], "peak_rss": []}
    base_name, _, label = tool_name.partition("@")
    for r in range(runs):
        tool = make_tool(base_name, home / f"{tool_name}-{r}")
        if label:  # this rempart from another source tree
            tool_env = tool.env() | {"PYTHONPATH": srcs[label]}
            tool.env = lambda e=tool_env: e  # type: ignore[method-assign,misc]
        shutil.rmtree(tool.home, ignore_errors=True)
        tool.init()
        for phase, label in (("initial", "a"), ("nochange", "b")):
            prepare_cache(cache, data)
            try:
                m = run_measured(tool.backup_argv(data, label), env=tool.env(), ok_codes=tool.backup_ok_codes(),
                                 timeout=timeout)
            except CommandTimedOut:
                out[phase]["timeout"] = timeout
                print(f"  {tool_name:17s} {phase:8s} killed after {timeout:.0f}s", file=sys.stderr, flush=True)
                break
            out[phase].setdefault("exit", []).append(m.returncode)
            out[phase]["wall_s"].append(m.wall_s)
            out[phase]["peak_rss"].append(m.peak_rss_bytes)
            print(f"  {tool_name:17s} {phase:8s} {m.wall_s:7.2f}s rss {m.peak_rss_bytes / MIB:6.0f} MiB",
                  file=sys.stderr, flush=True)
        out["repo_bytes"] = tree_size(tool.repo)[0]
        out["local_cache_bytes"] = tree_size(tool.cache_dir)[0]
        shutil.rmtree(tool.home, ignore_errors=True)
    return out


def render(result: dict[str, Any]) -> str:
    counts = result["files"]
    lines = [f"Command: `{result['command']}`  ", f"Cache mode `{result['cache']}`; {result['runs']} run(s) "
             f"per cell, medians; load average at start {result['load'][0]:.2f}.", ""]
    if result.get("notes"):
        lines += [f"Note: {n}" for n in result["notes"]] + [""]
    head = "| tool | backup |" + "".join(f" {n} files: peak RSS MiB | time s |" for n in counts)
    head += "".join(f" RSS {n}/{counts[0]} |" for n in counts[1:])
    lines += [head, "|---|---|" + "---:|---:|" * len(counts) + "---:|" * (len(counts) - 1)]
    for tool, per in result["tools"].items():
        for phase in ("initial", "nochange"):
            cells, rss = [], []
            for n in counts:
                cell = per[str(n)][phase]
                if cell["wall_s"]:
                    rss.append(median(cell["peak_rss"]))
                    cells.append(f" {rss[-1] / MIB:.0f} | {median(cell['wall_s']):.1f} |")
                else:
                    rss.append(float("nan"))
                    why = f"killed after {cell['timeout']:.0f} s" if "timeout" in cell else "not run"
                    if cell.get("skipped"):
                        why = "skipped"
                    cells.append(f" - | {why} |")
            ratio = " | ".join(f"{rss[k] / rss[0]:.2f}" for k in range(1, len(rss)))
            lines.append(f"| {tool} | {phase} |" + "".join(cells) + f" {ratio} |")
    alerts = [f"{tool} {n} files {ph}" for tool, per in result["tools"].items() for n in counts
              for ph in ("initial", "nochange") if 30 in per[str(n)][ph].get("exit", [])]
    if alerts:
        lines += ["", "Exit code 30 (ransomware detection alert; the backup is still complete) on: "
                  + ", ".join(alerts) + ". Half of the generated files are random bytes, which is what "
                  "encrypted files look like."]
    lines.append("")
    lines.append("Local state/cache after the second backup (MiB): " + "; ".join(
        f"{tool} " + ", ".join(f"{n}: {per[str(n)]['local_cache_bytes'] / MIB:.1f}" for n in counts)
        for tool, per in result["tools"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="10000,200000", help="comma-separated file counts")
    p.add_argument("--tools", default="rempart,restic", help="comma-separated: rempart, rempart-nodetect, restic, borg")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/rempart-bench-mem")
    p.add_argument("--cache", choices=("cold", "warm", "auto"), default="auto")
    p.add_argument("--timeout", type=float, default=900, help="kill a backup after this many seconds")
    p.add_argument("--src", action="append", default=[], metavar="LABEL=DIR",
                   help="run every rempart tool also (or only, see --tools) from this source tree")
    p.add_argument("--max-files", action="append", default=[], metavar="TOOL=N",
                   help="do not run TOOL above N files")
    p.add_argument("--data-dir", help="reuse DIR/files<N> if present (made by make_small_files with this "
                   "seed), and keep it")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.cache == "auto":
        args.cache = "cold" if can_drop_caches() else "warm"
    counts = [int(x) for x in args.files.split(",")]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    srcs = dict(x.split("=", 1) for x in args.src)
    max_files = {k: int(v) for k, v in (x.split("=", 1) for x in args.max_files)}
    if srcs:
        tools = [f"{t}@{label}" if t.startswith("rempart") else t for t in tools for label in srcs
                 ] if tools else tools
        tools = list(dict.fromkeys(tools))
    notes = []
    if "rempart" in tools and not detection_available():
        tools = ["rempart-nodetect" if t == "rempart" else t for t in tools]
        notes.append("rempart.agent.detection is missing in this build: rempart ran with --no-detect")
    work = Path(args.workdir)
    result: dict[str, Any] = {"command": "python bench/memory_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
                              "files": counts, "cache": args.cache, "runs": args.runs, "load": os.getloadavg(),
                              "notes": notes, "tools": {t: {} for t in tools}}
    for n in counts:
        data = Path(args.data_dir) / f"files{n}" if args.data_dir else work / f"files{n}"
        reuse = args.data_dir is not None and data.is_dir()
        if not reuse:
            shutil.rmtree(data, ignore_errors=True)
            t0 = time.perf_counter()
            size = make_small_files(data, n, args.seed)
            print(f"{n} files, {size / MIB:.0f} MiB, generated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        for t in tools:
            if n > max_files.get(t.partition("@")[0], n):
                result["tools"][t][str(n)] = {ph: {"wall_s": [], "peak_rss": [], "skipped": True}
                                             for ph in ("initial", "nochange")} | {"local_cache_bytes": 0}
                continue
            result["tools"][t][str(n)] = measure(t, data, work / "homes", args.cache, args.runs, args.timeout, srcs)
        if not args.data_dir:
            shutil.rmtree(data, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    md = render(result)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

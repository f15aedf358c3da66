#!/usr/bin/env python3
"""Compare rempart with restic and BorgBackup on the same dental-practice data in the same run.

For every run (fresh repositories, freshly generated data) and every tool it measures:

* ``initial``  - first backup of the whole folder,
* ``nochange`` - a second backup with nothing changed,
* ``day``      - a backup after one working day (``datagen.mutate_day``),
* ``restore``  - full restore of the latest snapshot into an empty folder,

each as wall time, throughput (MB/s of source data, MB = 10^6 bytes), peak RSS of the process
tree, repository size on disk and bytes the backup added to the repository (what a slow ADSL
link would have to carry). Tools run one after another inside a phase, in an order that rotates
between runs; before every measured command the page cache is dropped (``--cache cold``, needs
root) or every input is read once (``--cache warm``).

    python bench/compare.py --size-mb 2048 --runs 3 --json bench-results.json --markdown bench-results.md

``rempart`` is the default configuration (ransomware detection on); ``rempart-nodetect`` is the
same engine with ``--no-detect``: the difference is the cost of detection.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_measure import CommandFailed, can_drop_caches, prepare_cache, run_measured, tree_size
from bench_report import render_markdown
from bench_tools import Rempart, Tool, detection_available, make_tool, restored_root

PHASES = ("initial", "nochange", "day", "restore")


def load_generator() -> tuple[Any, str]:
    import datagen  # bench/datagen.py (owned by the detection helper)

    return datagen, "bench/datagen.py"


def machine_info(tools: list[Tool]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    versions = {}
    for t in tools:
        try:
            versions[t.name] = t.version()  # type: ignore[attr-defined]
        except Exception as exc:
            versions[t.name] = f"unknown ({exc})"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions,
            "loadavg_start": os.getloadavg()}


def measure_backup(tool: Tool, data: Path, label: str, cache: str, source_bytes: int,
                   sample: bool = True) -> dict[str, Any]:
    prepare_cache(cache, data)
    before, _ = tree_size(tool.repo)
    m = run_measured(tool.backup_argv(data, label), env=tool.env(), ok_codes=tool.backup_ok_codes(), sample=sample)
    after, _ = tree_size(tool.repo)
    cache_bytes, _ = tree_size(tool.cache_dir)
    rec: dict[str, Any] = {
        "wall_s": m.wall_s, "mb_s": source_bytes / 1e6 / m.wall_s, "cpu_s": m.cpu_s, "peak_rss": m.peak_rss_bytes,
        "maxrss": m.maxrss_bytes, "tree_rss": m.tree_rss_bytes, "tree_pss": m.tree_pss_bytes, "repo_bytes": after,
        "added_bytes": after - before, "local_cache_bytes": cache_bytes, "exit": m.returncode,
    }
    if isinstance(tool, Rempart):
        try:
            out = json.loads(m.stdout)
            rec["rempart_stored"] = out.get("storage", {}).get("bytes_stored")
            rec["detection"] = out.get("detection")
        except json.JSONDecodeError:
            pass
    return rec


def measure_restore(tool: Tool, target: Path, data: Path, cache: str, source_bytes: int,
                    verify: bool, sample: bool = True) -> dict[str, Any]:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    prepare_cache(cache, tool.repo)
    argv, cwd = tool.restore_argv(target)
    m = run_measured(argv, env=tool.env(), cwd=cwd, sample=sample)
    rec: dict[str, Any] = {"wall_s": m.wall_s, "mb_s": source_bytes / 1e6 / m.wall_s, "cpu_s": m.cpu_s,
                           "peak_rss": m.peak_rss_bytes, "maxrss": m.maxrss_bytes,
                           "tree_rss": m.tree_rss_bytes, "tree_pss": m.tree_pss_bytes, "exit": m.returncode}
    if verify:
        rec["verified"] = compare_trees(data, restored_root(target, data))
    shutil.rmtree(target, ignore_errors=True)
    return rec


def compare_trees(a: Path, b: Path) -> str:
    """'identical' or the first difference found (contents compared byte by byte)."""
    for dirpath, _dirs, files in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in files:
            pa, pb = Path(dirpath) / name, b / rel / name
            if not pb.exists() and not pb.is_symlink():
                return f"missing {rel / name}"
            if pa.is_symlink():
                if os.readlink(pa) != os.readlink(pb):
                    return f"symlink differs {rel / name}"
            elif not filecmp.cmp(pa, pb, shallow=False):
                return f"content differs {rel / name}"
    na, nb = tree_size(a)[1], tree_size(b)[1]
    return "identical" if na == nb else f"file count {na} != {nb}"


def one_run(run: int, args: argparse.Namespace, gen: Any, log: Any, *, timed: bool = True,
            sampled: bool = True) -> dict[str, Any]:
    """One repetition of every phase for every tool. ``sampled``: memory sampled meanwhile;
    ``timed``: its times count (a run made only for the memory figures does not)."""
    work = Path(args.workdir)
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.perf_counter()
    gen.generate(data, args.size_mb, args.seed)
    log(f"run {run + 1}: generated {args.size_mb} MB in {time.perf_counter() - t0:.1f}s")
    names = list(args.tools)
    k = run % len(names)
    order = names[k:] + names[:k]
    tools = {n: make_tool(n, work / f"run{run}" / n) for n in order}
    for t in tools.values():
        shutil.rmtree(t.home, ignore_errors=True)
        t.init()
    res: dict[str, Any] = {"order": order, "tools": {n: {} for n in order}, "timed": timed, "sampled": sampled}
    base_bytes, base_files = tree_size(data)
    res["source"] = {"initial_bytes": base_bytes, "initial_files": base_files}
    for phase, label in (("initial", "day0"), ("nochange", "day0b")):
        for n in order:
            rec = measure_backup(tools[n], data, label, args.cache, base_bytes, sampled)
            res["tools"][n][phase] = rec
            log(f"  {phase:8s} {n:17s} {rec['wall_s']:7.2f}s {rec['mb_s']:7.1f} MB/s "
                f"cpu {rec['cpu_s']:6.1f}s rss {rec['peak_rss'] / 2**20:6.0f} MiB  +{rec['added_bytes'] / 1e6:9.2f} MB")
    gen.mutate_day(data, 1, args.seed)
    day_bytes, day_files = tree_size(data)
    res["source"].update(day_bytes=day_bytes, day_files=day_files)
    for n in order:
        rec = measure_backup(tools[n], data, "day1", args.cache, day_bytes, sampled)
        res["tools"][n]["day"] = rec
        log(f"  {'day':8s} {n:17s} {rec['wall_s']:7.2f}s {rec['mb_s']:7.1f} MB/s "
            f"cpu {rec['cpu_s']:6.1f}s rss {rec['peak_rss'] / 2**20:6.0f} MiB  +{rec['added_bytes'] / 1e6:9.2f} MB")
    for n in order:
        if n == "rempart-nodetect" and "rempart" in order:
            continue  # same restore code as rempart
        rec = measure_restore(tools[n], work / "restore", data, args.cache, day_bytes,
                              verify=args.verify == "all" or (args.verify == "first" and run == 0), sample=sampled)
        res["tools"][n]["restore"] = rec
        log(f"  {'restore':8s} {n:17s} {rec['wall_s']:7.2f}s {rec['mb_s']:7.1f} MB/s "
            f"cpu {rec['cpu_s']:6.1f}s rss {rec['peak_rss'] / 2**20:6.0f} MiB  {rec.get('verified', '')}")
    if not args.keep:
        shutil.rmtree(work / f"run{run}", ignore_errors=True)
    return res


def _note_code_change(result: dict[str, Any], probe: list[Tool]) -> None:
    """The package is installed editable: say so when src/ changed under a running benchmark."""
    for t in probe:
        if isinstance(t, Rempart):
            now = t.version()
            start = result["machine"]["versions"].get(t.name)
            note = f"rempart's code changed during the benchmark (editable install): {start} at start, {now} after the last run"
            result["notes"] = [n for n in result["notes"] if not n.startswith("rempart's code changed")]
            if now != start:
                result["notes"].append(note)
            return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=2048, help="size of the generated practice folder (default 2048)")
    p.add_argument("--runs", type=int, default=3, help="repetitions with fresh repositories (default 3)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--tools", default="rempart,rempart-nodetect,restic,borg",
                   help="comma-separated: rempart, rempart-nodetect, restic, borg")
    p.add_argument("--workdir", default="/tmp/rempart-bench", help="scratch folder (data, repositories)")
    p.add_argument("--cache", choices=("cold", "warm", "auto"), default="auto",
                   help="drop the page cache before each command (cold, needs root) or read inputs "
                   "once (warm); auto = cold when possible")
    p.add_argument("--verify", choices=("first", "all", "none"), default="first",
                   help="byte-compare restored trees with the source (default: first run)")
    p.add_argument("--memory", choices=("separate", "inline"), default="separate",
                   help="separate (default): the timed runs do not sample memory, one more run does "
                   "(its times are shown apart); inline: every run samples memory while it is timed")
    p.add_argument("--keep", action="store_true", help="keep repositories after each run")
    p.add_argument("--json", dest="json_out", help="write raw results here")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--from-json", help="only render the tables of an earlier --json file (e.g. an interrupted run)")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    return args


def installed_like() -> list[str]:
    """Run rempart as an installed package runs: with compiled bytecode. An editable install
    (and PYTHONDONTWRITEBYTECODE, set in some shells) would otherwise make every measured
    command compile ~150 modules from source, which a pip-installed rempart never does."""
    import compileall

    notes = []
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        notes.append("PYTHONDONTWRITEBYTECODE was set in the environment: removed for the measured commands")
    import rempart

    compileall.compile_dir(str(Path(rempart.__file__).parent), quiet=1)
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        md = render_markdown(json.loads(Path(args.from_json).read_text()))
        if args.markdown:
            Path(args.markdown).write_text(md)
        print(md)
        return 0
    if args.cache == "auto":
        args.cache = "cold" if can_drop_caches() else "warm"
    notes = []
    if any(t == "rempart" for t in args.tools) and not detection_available():
        notes.append("rempart.agent.detection is missing in this build: the default `rempart` "
                     "configuration was run with --no-detect")
        args.tools = [t for t in args.tools if t != "rempart-nodetect"]
        args.tools = ["rempart-nodetect" if t == "rempart" else t for t in args.tools]
    notes += installed_like()
    gen, gen_name = load_generator()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    probe = [make_tool(n, Path(args.workdir) / "probe" / n) for n in args.tools]
    info = machine_info(probe)
    log(f"machine: {info['nproc']} cpu {info['cpu']}; cache mode {args.cache}; generator {gen_name}")
    runs: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result: dict[str, Any] = {"started": started, "args": dict(vars(args)), "generator": gen_name, "machine": info,
              "notes": notes, "runs": runs,
              "command": "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    separate = args.memory == "separate"
    for r in range(args.runs + separate):
        memory_run = separate and r == args.runs
        if memory_run:
            log(f"run {r + 1}: memory sampled, times not counted")
        try:
            runs.append(one_run(r, args, gen, log, timed=not memory_run, sampled=not separate or memory_run))
        except CommandFailed as exc:
            log(f"run {r + 1} failed: {exc}")
            if not runs:
                return 1
            result["notes"].append(f"run {r + 1} failed and was left out: {str(exc).splitlines()[0]}")
            break
        info["loadavg_end"] = os.getloadavg()
        _note_code_change(result, probe)
        if args.json_out:  # after every run, so an interrupted benchmark keeps what it measured
            Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))
    md = render_markdown(result)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown tables from compare.py's raw results: medians over runs and per-run ratios."""

from __future__ import annotations

from typing import Any

from bench_measure import median

MB = 1e6
MIB = 2**20


#: taken from the runs that sampled memory; every other figure from the timed runs (the two
#: are the same runs with ``compare.py --memory inline`` and in results from before that option)
_MEMORY_KEYS = frozenset({"peak_rss", "maxrss", "tree_rss", "tree_pss"})


def _runs(result: dict[str, Any], key: str, *, memory_runs: bool | None = None) -> list[dict[str, Any]]:
    sampled = key in _MEMORY_KEYS if memory_runs is None else memory_runs
    flag = "sampled" if sampled else "timed"
    return [r for r in result["runs"] if r.get(flag, True)]


def _vals(result: dict[str, Any], tool: str, phase: str, key: str) -> list[float]:
    out = []
    for run in _runs(result, key):
        rec = run["tools"].get(tool, {}).get(phase)
        if rec is not None and rec.get(key) is not None:
            out.append(float(rec[key]))
    return out


def _ratio(result: dict[str, Any], a: str, b: str, phase: str, key: str, *,
           memory_runs: bool | None = None) -> float:
    """Median over runs of a/b measured in the same run (pairs share the machine's mood)."""
    rs = []
    for run in _runs(result, key, memory_runs=memory_runs):
        ra, rb = run["tools"].get(a, {}).get(phase), run["tools"].get(b, {}).get(phase)
        if ra and rb and rb.get(key) and ra.get(key) is not None:
            rs.append(ra[key] / rb[key])
    return median(rs)


def _tools(result: dict[str, Any]) -> list[str]:
    return list(result["runs"][0]["order"]) if result["runs"] else []


def _fmt_range(vals: list[float], fmt: str) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(median(vals), fmt)} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"


def _headline(tools: list[str]) -> str | None:
    for t in ("rempart", "rempart-nodetect"):
        if t in tools:
            return t
    return None


def _pss(result: dict[str, Any], tool: str, phase: str) -> str:
    vals = [v for v in _vals(result, tool, phase, "tree_pss") if v]
    return f"{median(vals) / MIB:.0f}" if vals else "-"


def phase_table(result: dict[str, Any], phase: str) -> str:
    tools = _tools(result)
    ref = [t for t in ("restic", "borg") if t in tools]
    head = "| tool | time s, median (min-max) | MB/s | CPU s (user+sys) | peak RSS MiB | peak PSS MiB |"
    sep = "|---|---:|---:|---:|---:|---:|"
    for r in ref:
        head += f" time x{r} | CPU x{r} | RSS x{r} |"
        sep += "---:|---:|---:|"
    rows = [head, sep]
    for t in tools:
        if not _vals(result, t, phase, "wall_s"):
            continue
        row = (f"| {t} | {_fmt_range(_vals(result, t, phase, 'wall_s'), '.2f')} | "
               f"{median(_vals(result, t, phase, 'mb_s')):.1f} | "
               f"{median(_vals(result, t, phase, 'cpu_s')):.1f} | "
               f"{median(_vals(result, t, phase, 'peak_rss')) / MIB:.0f} | "
               f"{_pss(result, t, phase)} |")
        for r in ref:
            if t == r:
                row += " 1 | 1 | 1 |"
            else:
                row += (f" {_ratio(result, t, r, phase, 'wall_s'):.2f} |"
                        f" {_ratio(result, t, r, phase, 'cpu_s'):.2f} |"
                        f" {_ratio(result, t, r, phase, 'peak_rss'):.2f} |")
        rows.append(row)
    return "\n".join(rows)


def repo_table(result: dict[str, Any]) -> str:
    tools = _tools(result)
    rows = ["| tool | repo after initial MB | xrestic | added by no-change MB | added by one day MB | xrestic |"
            " repo after day MB | local cache MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tools:
        init = _vals(result, t, "initial", "repo_bytes")
        if not init:
            continue
        has_restic = "restic" in tools
        r_init = f"{_ratio(result, t, 'restic', 'initial', 'repo_bytes'):.3f}" if has_restic else "-"
        r_day = f"{_ratio(result, t, 'restic', 'day', 'added_bytes'):.2f}" if has_restic else "-"
        rows.append(
            f"| {t} | {median(init) / MB:.1f} | {r_init} | "
            f"{median(_vals(result, t, 'nochange', 'added_bytes')) / MB:.3f} | "
            f"{median(_vals(result, t, 'day', 'added_bytes')) / MB:.2f} | {r_day} | "
            f"{median(_vals(result, t, 'day', 'repo_bytes')) / MB:.1f} | "
            f"{median(_vals(result, t, 'day', 'local_cache_bytes')) / MB:.1f} |")
    return "\n".join(rows)


def targets_table(result: dict[str, Any]) -> str:
    tools = _tools(result)
    me = _headline(tools)
    if me is None or "restic" not in tools:
        return "(needs rempart and restic in the run)"
    rows = ["| target (vs restic, same run) | goal | aim | measured | met? |", "|---|---:|---:|---:|---|"]

    def add(label: str, value: float, goal: float, aim: float, higher_better: bool) -> None:
        met = value >= goal if higher_better else value <= goal
        sign = "≥" if higher_better else "≤"
        rows.append(f"| {label} | {sign} {goal} | {aim} | {value:.2f} | {'yes' if met else '**no**'} |")

    thr = lambda ph: 1 / _ratio(result, me, "restic", ph, "wall_s")  # noqa: E731
    add("initial backup throughput x", thr("initial"), 1.5, 2.0, True)
    add("restore throughput x", thr("restore"), 1.5, 2.0, True)
    add("no-change backup time x", _ratio(result, me, "restic", "nochange", "wall_s"), 1.0, 0.5, False)
    peak = max(_ratio(result, me, "restic", ph, "peak_rss") for ph in ("initial", "day", "restore"))
    add("peak memory x, RSS summed over processes (worst of initial/day/restore)", peak, 1.0, 0.75, False)
    if all(_vals(result, t, ph, "tree_pss") for t in (me, "restic") for ph in ("initial", "day", "restore")):
        peak = max(_ratio(result, me, "restic", ph, "tree_pss") for ph in ("initial", "day", "restore"))
        add("peak memory x, PSS summed over processes (worst of initial/day/restore)", peak, 1.0, 0.75, False)
    size = _ratio(result, me, "restic", "day", "repo_bytes")
    # "within 3 %" of restic's: larger by more than 3 % fails; smaller is only better
    rows.append(f"| repository size x | ≤ 1.03 | - | {size:.3f} | {'yes' if size <= 1.03 else '**no**'} |")
    sampled_only = [r for r in result["runs"] if not r.get("timed", True)]
    if sampled_only:
        def thr_sampled(ph: str) -> float:
            return 1 / _ratio(result, me, "restic", ph, "wall_s", memory_runs=True)

        rows.append("")
        rows.append(f"Times are from the {len(_runs(result, 'wall_s'))} timed run(s), memory from the "
                    f"{len(sampled_only)} run(s) that sampled it. Timed while sampling (that run): initial "
                    f"backup throughput x{thr_sampled('initial'):.2f}, restore x{thr_sampled('restore'):.2f}.")
    return "\n".join(rows)


def detection_table(result: dict[str, Any]) -> str:
    tools = _tools(result)
    if not ("rempart" in tools and "rempart-nodetect" in tools):
        return "(detection overhead not measured in this run)"
    rows = ["| backup | with detection s | --no-detect s | overhead s | overhead % |", "|---|---:|---:|---:|---:|"]
    for ph in ("initial", "nochange", "day"):
        a = median(_vals(result, "rempart", ph, "wall_s"))
        b = median(_vals(result, "rempart-nodetect", ph, "wall_s"))
        rows.append(f"| {ph} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {100 * (a - b) / b:+.0f}% |")
    verdicts = [r["tools"]["rempart"][ph].get("detection", {}).get("verdict")
                for r in result["runs"] for ph in ("initial", "nochange", "day")]  # every run: all benign
    alerts = sum(1 for v in verdicts if v == "suspicious")
    rows.append("")
    rows.append(f"Detection verdicts on the benign runs: {alerts} alert(s) out of {len(verdicts)} backups.")
    return "\n".join(rows)


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    src = result["runs"][0]["source"] if result["runs"] else {}
    parts = [
        f"Run started {result['started']}; {len(_runs(result, 'wall_s'))} timed run(s), "
        f"{len(_runs(result, 'tree_pss'))} sampling memory; cache mode "
        f"`{result['args']['cache']}`; generator {result['generator']}.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, Python {m['python']}; "
        f"load average at start {m['loadavg_start'][0]:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}.",
        "Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in m["versions"].items()) + ".",
        f"Source: {src.get('initial_bytes', 0) / MB:.0f} MB in {src.get('initial_files', 0)} files; after one "
        f"working day {src.get('day_bytes', 0) / MB:.0f} MB in {src.get('day_files', 0)} files.",
        f"Command: `{result['command']}`",
    ]
    parts += [f"Note: {n}" for n in result.get("notes", [])]
    out = ["\n".join(f"{p}  " for p in parts), "", "#### Targets", "", targets_table(result), ""]
    for ph, title in (("initial", "Initial backup"), ("nochange", "Second backup, nothing changed"),
                      ("day", "Backup after one working day"), ("restore", "Full restore")):
        out += [f"#### {title}", "", phase_table(result, ph), ""]
    out += ["#### Repository size and bytes to upload", "", repo_table(result), ""]
    out += ["#### Cost of ransomware detection (rempart with and without `--no-detect`)", "",
            detection_table(result), ""]
    restored = [r["tools"][t]["restore"].get("verified") for r in result["runs"] for t in r["tools"]
                if "restore" in r["tools"][t] and "verified" in r["tools"][t]["restore"]]
    if restored:
        out.append(f"Restores byte-compared with the source: {', '.join(str(v) for v in restored)}.")
    return "\n".join(out) + "\n"

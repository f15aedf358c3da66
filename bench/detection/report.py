"""Markdown rendering of the detection evaluation."""

from __future__ import annotations

from typing import Any


def _yn(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "**NO**")


def render(results: list[Any], meta: dict[str, Any]) -> str:
    lines = [
        "| scenario | kind | detected | backups to alert | hours to alert | files damaged at alert | % of files "
        "| clean point holds no damage | clean point = last backup before damage | rules | false alerts / 30 days |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fa = f"{r.false_alerts * 30 / max(r.days, 1):.2f} ({r.false_alerts} in {r.days} d)"
        if r.kind == "attack":
            lines.append(
                f"| {r.scenario} | attack | {_yn(r.detected)} | {r.backups_to_alert if r.detected else '-'} "
                f"| {r.hours_to_alert if r.detected else '-'} | {r.damaged_at_alert} | {r.damaged_pct} "
                f"| {_yn(r.clean_point_ok)} | {_yn(r.clean_point_exact)} | {r.rules or '-'} | {fa} |"
            )
        else:
            lines.append(f"| {r.scenario} | benign | - | - | - | - | - | - | - | - | {fa} |")
    benign_days = sum(r.days for r in results if r.kind == "benign")
    benign_alerts = sum(r.false_alerts for r in results if r.kind == "benign")
    overhead = meta["detect_s"] / meta["read_hash_s"] if meta["read_hash_s"] else 0.0
    pipeline_overhead = meta["benign_detect_s"] / meta["benign_pipeline_s"] if meta["benign_pipeline_s"] else 0.0
    benign_overhead = meta["benign_detect_s"] / meta["benign_read_hash_s"] if meta["benign_read_hash_s"] else 0.0
    lines += [
        "",
        f"- attacks detected: {sum(r.detected for r in results if r.kind == 'attack')}/"
        f"{sum(1 for r in results if r.kind == 'attack')}; clean point right: "
        f"{sum(bool(r.clean_point_ok) for r in results if r.kind == 'attack')}",
        f"- benign: {benign_alerts} false alerts in {benign_days} simulated days "
        f"({benign_alerts * 30 / max(benign_days, 1):.2f} per 30 days)",
        f"- detection CPU on benign days (the normal backup): {meta['benign_detect_s']:.2f} s for "
        f"{meta['benign_changed_files']} changed files ({meta['benign_changed_mib']} MiB) vs "
        f"{meta['benign_read_hash_s']:.2f} s to read+hash them: **{100 * benign_overhead:.1f} %**; vs "
        f"{meta['benign_pipeline_s']:.2f} s to read+hash+zstd(3)+AES-GCM them: **{100 * pipeline_overhead:.1f} %**",
        f"- detection CPU over all runs, attacks included: {meta['detect_s']:.2f} s for {meta['changed_files']} changed files "
        f"({meta['changed_mib']} MiB) vs {meta['read_hash_s']:.2f} s to read+hash them: "
        f"**{100 * overhead:.1f} %**",
        f"- data set: {meta['base_files']} files at start, config {meta['config']}, run time {meta['seconds']} s",
    ]
    return "\n".join(lines)

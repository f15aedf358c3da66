"""Markdown rendering of the detection evaluation."""

from __future__ import annotations

from typing import Any


def _yn(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "**NO**")


def render(results: list[Any], meta: dict[str, Any]) -> str:
    lines = [
        "| scenario | kind | detected | backups to alert | hours to alert | files damaged at alert | % of files "
        "| clean point holds no damage | clean point = last backup before damage | rules | false alerts / 30 days "
        "| files flagged damaged with no attack | legit-encrypted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fa = f"{r.false_alerts * 30 / max(r.days, 1):.2f} ({r.false_alerts} in {r.days} d)"
        if r.kind == "attack":
            lines.append(
                f"| {r.scenario} | attack | {_yn(r.detected)} | {r.backups_to_alert if r.detected else '-'} "
                f"| {r.hours_to_alert if r.detected else '-'} | {r.damaged_at_alert} | {r.damaged_pct} "
                f"| {_yn(r.clean_point_ok)} | {_yn(r.clean_point_exact)} | {r.rules or '-'} | {fa} "
                f"| {r.flagged} | {r.legit_encrypted} |"
            )
        else:
            lines.append(f"| {r.scenario} | benign | - | - | - | - | - | - | - | - | {fa} | {r.flagged} | {r.legit_encrypted} |")
    benign_days = sum(r.days for r in results if r.kind == "benign")
    benign_alerts = sum(r.false_alerts for r in results if r.kind == "benign")
    flagged = sum(r.flagged for r in results if r.kind == "benign")
    overhead = meta["detect_s"] / meta["read_hash_s"] if meta["read_hash_s"] else 0.0
    pipeline_overhead = meta["benign_detect_s"] / meta["benign_pipeline_s"] if meta["benign_pipeline_s"] else 0.0
    benign_overhead = meta["benign_detect_s"] / meta["benign_read_hash_s"] if meta["benign_read_hash_s"] else 0.0
    lines += [
        "",
        f"- attacks detected: {sum(r.detected for r in results if r.kind == 'attack')}/"
        f"{sum(1 for r in results if r.kind == 'attack')}; clean point right: "
        f"{sum(bool(r.clean_point_ok) for r in results if r.kind == 'attack')}",
        f"- benign: {benign_alerts} false alerts in {benign_days} simulated days "
        f"({benign_alerts * 30 / max(benign_days, 1):.2f} per 30 days); {flagged} file verdicts of damage "
        f"with no attack running, over {meta['benign_changed_files']} changed files",
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


def render_seeds(per_seed: dict[int, list[Any]]) -> str:
    """One line per scenario over several seeds (worst case of each column)."""
    names: dict[str, str] = {}
    for results in per_seed.values():
        for r in results:
            names.setdefault(r.scenario, r.kind)
    n = len(per_seed)
    lines = [
        f"| scenario | kind | detected (of {n} seeds) | worst backups to alert | worst % damaged at alert "
        "| clean point right | false alerts | simulated days |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kind in names.items():
        rs = [r for results in per_seed.values() for r in results if r.scenario == name]
        det = [r for r in rs if r.detected]
        worst_b = max((r.backups_to_alert for r in det), default="-")
        worst_p = max((r.damaged_pct for r in det), default="-")
        cp = sum(bool(r.clean_point_ok and r.clean_point_exact) for r in det)
        fa = sum(r.false_alerts for r in rs)
        days = sum(r.days for r in rs)
        if kind == "attack":
            lines.append(f"| {name} | attack | {len(det)} | {worst_b} | {worst_p} | {cp}/{len(det)} | {fa} | {days} |")
        else:
            lines.append(f"| {name} | benign | - | - | - | - | {fa} | {days} |")
    return "\n".join(lines)

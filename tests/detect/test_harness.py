"""The detection evaluation in its CI size: makes the issue's targets enforceable."""

from __future__ import annotations

from pathlib import Path

import pytest

from detection import evaluate


@pytest.mark.slow
def test_quick_evaluation_meets_targets(tmp_path: Path) -> None:
    results, meta = evaluate.evaluate(evaluate.QUICK, tmp_path)
    attacks = [r for r in results if r.kind == "attack"]
    benign = [r for r in results if r.kind == "benign"]
    assert len(attacks) >= 15 and len(benign) >= 8
    for r in attacks:
        assert r.detected, r.scenario
        assert r.clean_point_ok and r.clean_point_exact, r.scenario
        assert r.false_alerts == 0, r.scenario
        if r.scenario.startswith("slow"):
            assert r.damaged_pct < 1.0, r
        else:
            assert r.backups_to_alert == 1, r  # the first backup after the attack started
    for r in benign:
        assert r.false_alerts == 0, r.scenario
    assert meta["benign_changed_files"] > 1000  # the benign runs did real work

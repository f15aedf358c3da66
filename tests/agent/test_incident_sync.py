"""The agent clears its local damage ledger only when the vault says an admin released the
incident after the newest suspicious snapshot (rempart.agent.incident)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rempart.agent.credentials import repo_state_dir
from rempart.agent.detection import LEDGER_KEY, make_detection
from rempart.agent.incident import released_by_vault, sync_incident
from rempart.core.errors import TransientError
from rempart.detect.ledger import DamageLedger
from rempart.snapshot.cache import StateCache

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def status(**inc: Any) -> dict[str, Any]:
    base = {"frozen": False, "frozen_at": None, "released_at": None, "last_suspicious_at": None}
    return {"practice": "p", "incident": {**base, **inc}}


@pytest.mark.parametrize(("inc", "expected"), [
    ({"released_at": 200.0, "last_suspicious_at": 100.0}, True),
    ({"released_at": 200.0}, True),                                   # every suspicious one marked false positive
    ({"released_at": 100.0, "last_suspicious_at": 200.0}, False),     # released before the newest attack
    ({"released_at": 200.0, "last_suspicious_at": 100.0, "frozen": True}, False),  # frozen again
    ({"released_at": None, "last_suspicious_at": None}, False),       # never released
    ({"released_at": "200", "last_suspicious_at": 100.0}, False),     # malformed
])
def test_released_by_vault(inc: dict[str, Any], expected: bool) -> None:
    assert released_by_vault(status(**inc)) is expected


def test_released_by_vault_needs_the_incident_block() -> None:
    assert not released_by_vault({"frozen": False})  # an older vault without the incident state


def _ledger(state: Path, repo: str, *, open_: bool) -> None:
    led = DamageLedger()
    led.add("/c/a.docx", "encrypted", T0, "parent1")
    if open_:
        led.open_incident(T0)
    cache = StateCache(repo_state_dir(state, repo))
    cache.set_meta(LEDGER_KEY, json.dumps(led.to_dict(), sort_keys=True))
    cache.close()


def _read(state: Path, repo: str) -> DamageLedger:
    cache = StateCache(repo_state_dir(state, repo))
    try:
        return DamageLedger.from_dict(json.loads(cache.get_meta(LEDGER_KEY) or "{}"))
    finally:
        cache.close()


def test_sync_clears_an_open_incident_released_at_the_vault(tmp_path: Path) -> None:
    det = make_detection(tmp_path, "r1")
    _ledger(tmp_path, "r1", open_=True)
    assert not sync_incident(det, tmp_path, "r1", lambda: status(frozen=True, released_at=1.0))
    assert _read(tmp_path, "r1").incident_open
    assert sync_incident(det, tmp_path, "r1", lambda: status(released_at=300.0, last_suspicious_at=200.0))
    led = _read(tmp_path, "r1")
    assert not led.incident_open and not led.entries


def test_sync_never_touches_a_ledger_without_open_incident(tmp_path: Path) -> None:
    """A slow attack accumulating below the threshold is not wiped, and the vault is not asked."""
    det = make_detection(tmp_path, "r1")
    _ledger(tmp_path, "r1", open_=False)
    asked: list[int] = []

    def st() -> dict[str, Any]:
        asked.append(1)
        return status(released_at=300.0)

    assert not sync_incident(det, tmp_path, "r1", st)
    assert not asked
    assert "/c/a.docx" in _read(tmp_path, "r1").entries


def test_sync_unreachable_vault_changes_nothing(tmp_path: Path) -> None:
    det = make_detection(tmp_path, "r1")
    _ledger(tmp_path, "r1", open_=True)

    def down() -> dict[str, Any]:
        raise TransientError("vault unreachable")

    assert not sync_incident(det, tmp_path, "r1", down)
    assert _read(tmp_path, "r1").incident_open

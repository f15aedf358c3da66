"""Learn from the vault that an incident was closed, and clear the local damage ledger.

When a backup looks attacked, the agent opens an incident in its local damage ledger and the
vault freezes the practice. An admin then either marks the verdict a false positive or releases
the freeze at the vault (audited, admin scope only). Before each backup to a vault, the agent asks
the vault for the practice's incident state (``GET /v1/p/PRACTICE/status``, readable with the
backup token, server times, no names) and acknowledges its own ledger only when:

* its ledger has an open incident (otherwise it asks nothing and changes nothing: a slow attack
  accumulating in the ledger is never wiped by this path),
* the practice is not frozen at the vault, and
* the vault recorded a release at or after the newest suspicious snapshot it still holds
  (snapshots marked false positive do not count).

The vault's freeze is the authority: nothing on the PC can release it (no route lets a backup
token do so), so malware that makes the agent clear its ledger hides nothing from the vault, and a
continuing attack is judged afresh at the next backup, flagged again and freezes the practice
again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rempart.core.errors import RempartError
from rempart.detect.ledger import DamageLedger

log = logging.getLogger("rempart.agent")


def released_by_vault(status: dict[str, Any]) -> bool:
    """Whether the vault's incident state says an admin closed the practice's last incident."""
    inc = status.get("incident")
    if not isinstance(inc, dict) or inc.get("frozen", True):
        return False
    released, suspicious = inc.get("released_at"), inc.get("last_suspicious_at")
    if not isinstance(released, int | float):
        return False
    return suspicious is None or (isinstance(suspicious, int | float) and released >= suspicious)


def incident_open(cache: Any) -> bool:
    from rempart.agent.detection import LEDGER_KEY  # type: ignore[import-not-found,unused-ignore]

    raw = cache.get_meta(LEDGER_KEY)
    if not raw:
        return False
    try:
        return DamageLedger.from_dict(json.loads(raw)).incident_open
    except (ValueError, TypeError, KeyError):
        return False


def sync_incident(detection: Any, state_dir: Path, repo_id: str,
                  status: Callable[[], dict[str, Any]]) -> bool:
    """Acknowledge the local ledger if the vault released the incident; True if it did.

    ``detection`` is an :class:`rempart.agent.detection.AgentDetection` (only its public
    ``acknowledge(cache)`` is used); ``status`` fetches the vault's practice status. A vault that
    cannot be reached changes nothing (the backup itself will report the error)."""
    from rempart.agent.credentials import repo_state_dir
    from rempart.snapshot.cache import StateCache

    cache = StateCache(repo_state_dir(state_dir, repo_id))
    try:
        if not incident_open(cache):
            return False
        try:
            st = status()
        except RempartError as exc:
            log.warning("could not ask the vault whether the incident was released (%s)", exc.reference)
            return False
        if not released_by_vault(st):
            return False
        done = bool(detection.acknowledge(cache))
        if done:
            log.warning("the vault released the incident: local damage history cleared, backups judged afresh")
        return done
    finally:
        cache.close()


def vault_status_of(backend: Any) -> Callable[[], dict[str, Any]] | None:
    """The ``status`` method of the vault client under storage wrappers, or None if not a vault."""
    from rempart.storage.vaultclient import VaultBackend

    b = backend
    for _ in range(10):
        if isinstance(b, VaultBackend):
            return b.status
        b = getattr(b, "inner", None)
        if b is None:
            return None
    return None

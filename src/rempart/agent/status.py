"""``rempart status``: one line for the practice — green, orange or red — and what to do.

Sources, best first: the vault's own record (its clock, its snapshots: what really arrived),
then the agent's local state. Rules, worst first:

* red: incident freeze on the vault; the last backup looks attacked; no good backup ever; the
  last restore drill could not read a backup back (``rempart drill``, vault only); or the last
  good backup is older than ``red_after_hours``.
* orange: the last good backup is older than ``orange_after_hours``; the last run failed; or
  the vault could not be reached to confirm.
* green otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from rempart.agent.config import StatusSettings
from rempart.agent.state import AgentState


@dataclass(frozen=True)
class Status:
    level: str                       # green | orange | red
    summary: str
    action: str
    last_good: str | None            # ISO time of the last good backup
    last_good_age_hours: float | None
    last_outcome: str | None
    vault_reachable: bool | None     # None: not a vault repository
    source: str                      # vault | local

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        icon = {"green": "OK", "orange": "ATTENTION", "red": "ALERT"}[self.level]
        return f"[{self.level.upper()}] {icon}: {self.summary} — {self.action}"


def _age(hours: float) -> str:
    if hours < 1:
        return f"{max(0, int(hours * 60))} min ago"
    if hours < 48:
        return f"{hours:.0f} h ago"
    return f"{hours / 24:.0f} days ago"


def compute(settings: StatusSettings, state: AgentState, now: datetime,
            vault: dict[str, Any] | None, vault_error: str | None, is_vault: bool) -> Status:
    last_good_time: datetime | None = state.time("last_success")
    source = "local"
    suspicious = state.last_outcome == "suspicious"
    frozen = drill_failed = False
    if vault is not None:
        source = "vault"
        frozen = bool(vault.get("frozen"))
        clean_at, server_now = vault.get("last_clean_at"), vault.get("server_time")
        if clean_at is not None and server_now is not None:
            last_good_time = datetime.fromtimestamp(float(clean_at), tz=UTC)
            hours: float | None = max(0.0, float(server_now) - float(clean_at)) / 3600
        else:
            last_good_time, hours = None, None
        suspicious = suspicious or vault.get("last_verdict") == "suspicious"
        drill = vault.get("last_drill")
        drill_failed = isinstance(drill, dict) and drill.get("outcome") == "failed"
    else:
        hours = (now - last_good_time).total_seconds() / 3600 if last_good_time else None
    failed = state.last_outcome == "failed"

    def make(level: str, summary: str, action: str) -> Status:
        return Status(level, summary, action, last_good_time.isoformat() if last_good_time else None,
                      round(hours, 2) if hours is not None else None, state.last_outcome,
                      (vault is not None) if is_vault else None, source)

    if frozen:
        return make("red", "the vault has frozen this practice's backups after an incident",
                    "call your IT provider now; do not delete anything")
    if suspicious:
        return make("red", "the last backup looks like ransomware damage",
                    "call your IT provider now; leave the PC on and unplug it from the network")
    if hours is None:
        return make("red", "no backup has been stored yet",
                    "check that the Rempart agent service is running, or call your IT provider")
    if drill_failed:
        return make("red", "the last restore drill could not read a backup back",
                    "call your IT provider: backups are kept, but they must check and repair them")
    if hours > settings.red_after_hours:
        return make("red", f"the last good backup is from {_age(hours)}",
                    "backups have stopped: call your IT provider today")
    if hours > settings.orange_after_hours:
        return make("orange", f"the last good backup is from {_age(hours)}",
                    "leave the PC on and connected tonight; call your IT provider if this stays orange tomorrow")
    if failed:
        return make("orange", f"last good backup {_age(hours)}, but the last attempt failed "
                    f"({state.last_error_class or 'error'})", "it will retry by itself; call your IT provider if "
                    "this stays orange tomorrow")
    if is_vault and vault is None:
        return make("orange", f"last good backup {_age(hours)} (local record; the vault could not be reached: "
                    f"{vault_error or 'unknown error'})", "check the internet connection")
    return make("green", f"last good backup {_age(hours)}", "nothing to do")

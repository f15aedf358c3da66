"""The damage ledger: damaged files remembered across backups, for slow attacks and clean points.

Kept by the agent in its local state (it names paths, so it never leaves the practice PC). Each
entry records when a damaged file was first seen and the snapshot before that backup (the last
one that still held the good version). Encrypted files do not come back, so an entry leaves the
ledger only when its file is seen healthy again (a document caught mid-save), when it ages out of
the window while no incident is open, or when an operator acknowledges the incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rempart.core.clock import from_iso, to_iso

MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class LedgerEntry:
    path: str
    kind: str
    first_seen: datetime
    parent: str | None  # the snapshot before the backup that first saw the damage
    counts: bool = True  # damaged file (True) or context (ransom note, deletion, canary)

    def to_dict(self) -> dict[str, Any]:
        return {"p": self.path, "k": self.kind, "t": to_iso(self.first_seen), "s": self.parent, "c": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEntry:
        return cls(str(data["p"]), str(data["k"]), from_iso(data["t"]), data.get("s"), bool(data.get("c", True)))


class DamageLedger:
    """Sliding window of damaged files across snapshots (serialisable with to_dict/from_dict)."""

    def __init__(
        self,
        entries: dict[str, LedgerEntry] | None = None,
        *,
        window_days: int = 30,
        incident_since: datetime | None = None,
        incident_clean_point: str | None = None,
        incident_open: bool = False,
    ) -> None:
        self.entries: dict[str, LedgerEntry] = dict(entries or {})
        self.window_days = window_days
        self.incident_open = incident_open
        self.incident_since = incident_since
        self.incident_clean_point = incident_clean_point

    def copy(self) -> DamageLedger:
        return DamageLedger(
            self.entries,
            window_days=self.window_days,
            incident_since=self.incident_since,
            incident_clean_point=self.incident_clean_point,
            incident_open=self.incident_open,
        )

    def add(self, path: str, kind: str, when: datetime, parent: str | None, *, counts: bool = True) -> None:
        """Record ``path`` as damaged unless it is already recorded (the first sighting wins)."""
        if path in self.entries or len(self.entries) >= MAX_ENTRIES:
            return
        self.entries[path] = LedgerEntry(path, kind, when, parent, counts)

    def heal(self, path: str) -> bool:
        """The file is healthy again: forget it. Returns True if it was recorded."""
        return self.entries.pop(path, None) is not None

    def expire(self, now: datetime) -> None:
        """Drop entries older than the window, unless an incident is open."""
        if self.incident_open:
            return
        limit = now - timedelta(days=self.window_days)
        self.entries = {p: e for p, e in self.entries.items() if e.first_seen >= limit}

    def damaged_in_window(self, now: datetime) -> int:
        limit = now - timedelta(days=self.window_days)
        return sum(1 for e in self.entries.values() if e.counts and e.first_seen >= limit)

    def earliest(self) -> LedgerEntry | None:
        if not self.entries:
            return None
        return min(self.entries.values(), key=lambda e: e.first_seen)

    def clean_point(self) -> str | None:
        """The newest snapshot taken before the earliest damage still recorded."""
        if self.incident_open:
            return self.incident_clean_point  # fixed when the incident opened
        first = self.earliest()
        return first.parent if first is not None else None

    def open_incident(self, when: datetime) -> None:
        if not self.incident_open:
            first = self.earliest()
            self.incident_open = True
            self.incident_since = first.first_seen if first is not None else when
            self.incident_clean_point = first.parent if first is not None else None

    def acknowledge(self) -> None:
        """An operator closed the incident (false positive or restored): start afresh."""
        self.entries.clear()
        self.incident_open = False
        self.incident_since = None
        self.incident_clean_point = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "window_days": self.window_days,
            "incident_open": self.incident_open,
            "incident_since": to_iso(self.incident_since) if self.incident_since else None,
            "incident_clean_point": self.incident_clean_point,
            "entries": [e.to_dict() for e in sorted(self.entries.values(), key=lambda e: e.path)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DamageLedger:
        since = data.get("incident_since")
        entries = [LedgerEntry.from_dict(e) for e in data.get("entries", [])]
        return cls(
            {e.path: e for e in entries},
            window_days=int(data.get("window_days", 30)),
            incident_since=from_iso(since) if since else None,
            incident_clean_point=data.get("incident_clean_point"),
            incident_open=bool(data.get("incident_open", False)),
        )

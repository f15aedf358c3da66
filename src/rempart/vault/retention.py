"""Which snapshots the vault keeps: the vault's policy mapped onto the shared, keyless selection
function (``rempart.repository.retention``, also used by ``rempart forget``).

Rules (restic's forget policy, decided by the vault on its own clock):

* every snapshot received less than ``min_age_days`` ago is kept, whatever else;
* ``keep_last`` N: the N newest *clean* snapshots (suspicious ones never count, so a burst of
  garbage snapshots cannot push the good ones out);
* ``hourly``/``daily``/``weekly``/``monthly``/``yearly`` N: the newest clean snapshot of each of
  the N most recent hours/days/... that hold a clean snapshot;
* a suspicious snapshot marked a false positive counts as clean;
* while the practice is frozen nothing is forgotten, nor is a snapshot under legal hold (the
  caller, ``rempart.vault.gc.forget``, checks both).

Times are the *server* receive times, never the client's clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from rempart.repository.retention import KeepPolicy, SnapRecord, keep_reasons
from rempart.vault.config import RetentionPolicy

__all__ = ["SnapRecord", "keep_policy", "select_kept"]


def keep_policy(policy: RetentionPolicy) -> KeepPolicy:
    return KeepPolicy(last=policy.keep_last, hourly=policy.hourly, daily=policy.daily, weekly=policy.weekly,
                      monthly=policy.monthly, yearly=policy.yearly, min_age=policy.min_age_days * 86400.0)


def select_kept(records: Iterable[SnapRecord], policy: RetentionPolicy, now: float) -> tuple[set[str], dict[str, str]]:
    """Return (names to keep, first reason per kept name)."""
    reasons = keep_reasons(records, keep_policy(policy), now)
    return set(reasons), {name: why[0] for name, why in reasons.items()}

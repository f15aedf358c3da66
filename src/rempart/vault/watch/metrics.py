"""Prometheus gauges of the watch, added to the vault's registry (scraped via ``/metrics``):
open alerts per practice and level, the status light, and the age of the last *good* backup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rempart.vault.watch.service import WatchService

LIGHT = {"green": 0.0, "orange": 1.0, "red": 2.0}


class WatchCollector(Collector):
    def __init__(self, service: WatchService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        open_ = GaugeMetricFamily("rempart_vault_alerts_open", "Open alerts per practice and level",
                                  labels=["practice", "level"])
        for (practice, level), n in sorted(self.service.open_alert_counts().items()):
            open_.add_metric([practice, level], float(n))
        light = GaugeMetricFamily("rempart_vault_practice_status",
                                  "Status light per practice: 0 green, 1 orange, 2 red", labels=["practice"])
        good = GaugeMetricFamily("rempart_vault_practice_last_backup_age_seconds",
                                 "Seconds since the last backup was received (server clock)", labels=["practice"])
        now = self.service.vault.clock.now()
        for s in self.service.watch.states():
            light.add_metric([s.name], LIGHT[s.light])
            if s.facts.last_snapshot is not None:
                good.add_metric([s.name], max(0.0, (now - s.facts.last_snapshot).total_seconds()))
        yield from (open_, light, good)


"""Prometheus metrics: request counters, and per-practice gauges read from the database at scrape.

Each app has its own registry (several apps can live in one test process).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rempart.vault import db
from rempart.vault.service import Vault

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PracticeCollector(Collector):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def collect(self) -> Iterator[Any]:
        now = self.vault.now()
        stored = GaugeMetricFamily("rempart_vault_practice_bytes_stored", "Bytes stored per practice",
                                   labels=["practice"])
        quota = GaugeMetricFamily("rempart_vault_practice_quota_bytes", "Quota per practice (0 = none)",
                                  labels=["practice"])
        age = GaugeMetricFamily("rempart_vault_practice_last_snapshot_age_seconds",
                                "Seconds since the last snapshot was received (server time)", labels=["practice"])
        frozen = GaugeMetricFamily("rempart_vault_practice_frozen", "1 while under incident freeze",
                                   labels=["practice"])
        snaps = GaugeMetricFamily("rempart_vault_practice_snapshots", "Kept snapshots per practice",
                                  labels=["practice"])
        with self.vault.engine.connect() as conn:
            counts: dict[int, int] = dict(conn.execute(  # type: ignore[arg-type]
                sa.select(db.snapshots.c.practice_id, sa.func.count()).where(db.snapshots.c.state == "kept")
                .group_by(db.snapshots.c.practice_id)).all())
            for r in conn.execute(sa.select(db.practices)):
                stored.add_metric([r.name], float(r.used_bytes or 0))
                quota.add_metric([r.name], float(r.quota_bytes or 0))
                frozen.add_metric([r.name], 1.0 if r.frozen else 0.0)
                snaps.add_metric([r.name], float(counts.get(r.id, 0)))
                if r.last_snapshot_at is not None:
                    age.add_metric([r.name], max(0.0, now - r.last_snapshot_at))
        yield from (stored, quota, age, frozen, snaps)


class Metrics:
    def __init__(self, vault: Vault) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rempart_vault_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.bytes_received = Counter("rempart_vault_bytes_received", "Bytes of accepted uploads",
                                      ["type"], registry=self.registry)
        self.bytes_sent = Counter("rempart_vault_bytes_sent", "Bytes of objects served, by type and by "
                                  "whole object or byte range", ["type", "read"], registry=self.registry)
        self.reads = Counter("rempart_vault_reads", "Objects (or byte ranges of them) served, by type and by "
                             "whole object or byte range", ["type", "read"], registry=self.registry)
        self.auth_failures = Counter("rempart_vault_auth_failures", "Refused authentications",
                                     registry=self.registry)
        self.registry.register(PracticeCollector(vault))

    def render(self) -> bytes:
        return generate_latest(self.registry)

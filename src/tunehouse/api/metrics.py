"""Prometheus metrics read from the store at scrape time, so every replica reports the same truth."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tunehouse.core.states import RunState
from tunehouse.store.db import Database
from tunehouse.store.models import Run


class RunStateCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("tunehouse_runs", "Runs by state (all accounts)", labels=["state"])
        with self.db.session() as s:
            counts = dict(
                s.execute(
                    select(Run.state, func.count()).where(Run.deleted_at.is_(None)).group_by(Run.state)
                ).all()
            )
        for state in RunState:
            gauge.add_metric([state.value], float(counts.get(state.value, 0)))
        yield gauge

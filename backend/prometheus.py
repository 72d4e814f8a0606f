"""Prometheus series for runs and usage, served by the /metrics endpoint (default registry).

Cluster-wide figures come from Postgres and Redis, not from counters in one process: every API
process reports the same truth, whichever worker did the work, and a rolled-back transaction is
never counted. They are read at scrape time (``refresh``, at most every ``MAX_AGE_SECONDS``)
and served by a custom collector:

- ``agentry_runs{status}``: queued/running from the runs table, finished ones from the rollups;
- ``agentry_tokens_total{provider,model,kind}``, ``agentry_cost_usd_total{provider,model}``,
  ``agentry_provider_calls_total``, ``agentry_cost_unknown_calls_total``: from the rollups;
- ``agentry_queue_depth``, ``agentry_workers_alive``: from Redis;
- ``agentry_run_duration_last_hour_seconds{quantile}``: p50/p95 over the last hour.

``agentry_run_duration_seconds`` (a histogram, backend.runs.metrics) is observed by the
process that finishes a run, after its transaction commits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend import admin
from backend.runs import metrics as runs_metrics
from backend.usage import metrics as usage_metrics

log = structlog.get_logger()

MAX_AGE_SECONDS = 10.0
_KINDS = ("input", "output", "cache_read", "cache_write")


@dataclass
class Snapshot:
    runs: dict[str, int] = field(default_factory=dict)
    by_model: list[Any] = field(default_factory=list)
    queue_depth: int | None = None
    workers: int | None = None
    durations: dict[str, Any] = field(default_factory=dict)


class UsageCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.refreshed_at = float("-inf")

    async def refresh(self, app: FastAPI, *, max_age: float = MAX_AGE_SECONDS) -> None:
        """Re-read the figures if older than ``max_age``; on failure keep serving the last ones."""
        if time.monotonic() - self.refreshed_at < max_age:
            return
        state = app.state
        try:
            async with state.sessionmaker() as session:
                snapshot = Snapshot(
                    runs=await admin.runs_by_status(session),
                    by_model=await usage_metrics.usage_by_model(session),
                    durations=await runs_metrics.run_durations(session),
                )
            snapshot.queue_depth = await runs_metrics.queue_depth(
                state.redis, state.settings.QUEUE_NAME
            )
            workers = await runs_metrics.workers_alive(state.redis)
            snapshot.workers = None if workers is None else len(workers)
        except Exception:  # noqa: BLE001 - a scrape must not fail because Postgres is down
            log.warning("usage_metrics_refresh_failed", exc_info=True)
            return
        self.snapshot, self.refreshed_at = snapshot, time.monotonic()

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        runs = GaugeMetricFamily("agentry_runs", "Runs by status", labels=["status"])
        for status, count in s.runs.items():
            runs.add_metric([status], count)
        yield runs
        yield from _by_model(s.by_model)
        if s.queue_depth is not None:
            yield GaugeMetricFamily(
                "agentry_queue_depth", "Jobs waiting in the run queue", value=s.queue_depth
            )
        if s.workers is not None:
            yield GaugeMetricFamily(
                "agentry_workers_alive", "Workers with a live heartbeat key", value=s.workers
            )
        durations = GaugeMetricFamily(
            "agentry_run_duration_last_hour_seconds",
            "Run duration quantiles over runs finished in the last hour",
            labels=["quantile"],
        )
        for quantile, key in (("0.5", "p50_seconds"), ("0.95", "p95_seconds")):
            if s.durations.get(key) is not None:
                durations.add_metric([quantile], s.durations[key])
        yield durations


def _by_model(rows: list[Any]) -> Iterator[Metric]:
    labels = ["provider", "model"]
    tokens = CounterMetricFamily(
        "agentry_tokens", "Tokens by provider, model and kind", labels=[*labels, "kind"]
    )
    cost = CounterMetricFamily("agentry_cost_usd", "Known cost in USD", labels=labels)
    calls = CounterMetricFamily("agentry_provider_calls", "Provider calls", labels=labels)
    unknown = CounterMetricFamily(
        "agentry_cost_unknown_calls", "Provider calls without a known price", labels=labels
    )
    for r in rows:
        key = [r.provider, r.model]
        for kind in _KINDS:
            tokens.add_metric([*key, kind], int(getattr(r, f"{kind}_tokens")))
        cost.add_metric(key, float(r.cost_usd))
        calls.add_metric(key, int(r.calls))
        unknown.add_metric(key, int(r.unknown_cost_calls))
    yield from (tokens, cost, calls, unknown)


def _install() -> UsageCollector:
    # Module import happens once per process; re-registering would raise on duplicate names.
    collector = UsageCollector()
    REGISTRY.register(collector)
    return collector


COLLECTOR = _install()


async def refresh(app: FastAPI) -> None:
    await COLLECTOR.refresh(app)

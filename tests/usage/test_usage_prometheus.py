"""/metrics: runs by status, tokens and cost by model, queue depth, run durations (the
histogram of runs that end is observed by the runs domain: tests/runs)."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from backend import prometheus
from backend.core.db import commit, utcnow
from backend.runs.models import RunStatus
from backend.usage.tokens import Usage
from tests.usage.conftest import OVERRIDE, World, finish, record_call


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, labels or {})


async def test_prometheus_series_read_the_database_at_scrape_time(
    client, app, world: World
) -> None:
    agent = await world.agent()
    now = utcnow()
    for tokens in (100, 300):
        run = await world.run(agent, provider="fake", model="fake-1")
        await record_call(
            world.db,
            run,
            attempt=1,
            provider="fake",
            model="fake-1",
            usage=Usage(input_tokens=tokens, output_tokens=tokens, cache_read_tokens=7),
            succeeded=True,
            pricing_override=OVERRIDE,
            at=now,
        )
        await finish(
            world.db, run, RunStatus.succeeded, at=now, started_at=now - timedelta(seconds=3)
        )
        await commit(world.db)  # the histogram is observed only after the commit
    await world.run(agent)  # queued
    rolled_back = await world.run(agent, provider="fake", model="fake-1")
    await finish(world.db, rolled_back, RunStatus.failed, at=now)
    await world.db.rollback()  # neither counted nor observed
    await app.state.redis.zadd(app.state.settings.QUEUE_NAME, {"job": 1})

    prometheus.COLLECTOR.refreshed_at = float("-inf")  # other tests may have scraped just now
    response = await client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'agentry_runs{status="succeeded"} 2.0' in text
    assert 'agentry_runs{status="queued"} 2.0' in text  # the rolled-back finish stays queued
    assert 'agentry_runs{status="failed"} 0.0' in text
    model = {"provider": "fake", "model": "fake-1"}
    assert sample("agentry_tokens_total", {**model, "kind": "input"}) == 400
    assert sample("agentry_tokens_total", {**model, "kind": "cache_read"}) == 14
    # 400 input at $2 + 400 output at $8 + 14 cache reads at the input rate, per MTok.
    assert sample("agentry_cost_usd_total", model) == (400 * 2 + 400 * 8 + 14 * 2) / 1e6
    assert sample("agentry_provider_calls_total", model) == 2
    assert sample("agentry_queue_depth") == 1
    assert sample("agentry_run_duration_last_hour_seconds", {"quantile": "0.5"}) == 3.0


async def test_a_failed_refresh_keeps_serving_the_last_figures(client, app) -> None:
    class Broken:
        def __call__(self):
            raise ConnectionError("database down")

    collector = prometheus.UsageCollector()
    collector.snapshot = prometheus.Snapshot(runs={"queued": 5})
    original = app.state.sessionmaker
    app.state.sessionmaker = Broken()
    try:
        await collector.refresh(app)
    finally:
        app.state.sessionmaker = original
    assert collector.snapshot.runs == {"queued": 5}
    assert [m.name for m in collector.collect()][0] == "agentry_runs"

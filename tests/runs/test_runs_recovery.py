"""Recovery: a SIGKILLed worker process, a dead worker's runs, a flushed Redis, Redis down at
submit, and stale job re-deliveries."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from arq.worker import Worker
from sqlalchemy import select

from backend.agents.models import AgentEvent
from backend.config import Settings
from backend.runs import attempt, dispatch, executor, pipeline
from backend.runs.models import ProviderCall, Run
from backend.worker import run_worker
from tests.conftest import make_settings
from tests.runs.conftest import World, eventually, spawn_worker_process
from tests.support.apps import closed_port_url, running_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def start_worker(worker_settings: Settings, clean: None) -> AsyncIterator[Callable]:
    """Start in-process workers when the test says so; all are closed at the end."""
    started: list[Worker] = []

    async def start() -> Worker:
        worker = await run_worker(worker_settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.close()


async def _run_row(world: World, run_id: str) -> Run:
    row = await world.db.scalar(
        select(Run).where(Run.id == run_id).execution_options(populate_existing=True)
    )
    assert row is not None
    return row


@pytest.mark.slow
async def test_sigkill_mid_run_is_retried_and_counted_once(
    world: World, settings: Settings, worker_settings: Settings, start_worker, tmp_path: Path
) -> None:
    timeout, grace = 4, worker_settings.RUN_REAP_GRACE_SECONDS
    agent_type = await world.agent_type(
        timeout_seconds=timeout, max_retries=2, config={"latency_ms": 1500}
    )
    agent = await world.agent(agent_type)
    process = spawn_worker_process(settings, tmp_path / "worker.log")
    try:
        run_id = (await world.submit(agent, "survive this"))["id"]

        async def running() -> bool:
            return (await _run_row(world, run_id)).status == "running"

        await eventually(running, timeout=30)  # the subprocess claimed it
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    await start_worker()  # its reaper notices the dead worker; it runs the retry

    async def left_the_dead_worker() -> bool:
        row = await _run_row(world, run_id)
        return row.attempt >= 2 or row.status != "running"

    await eventually(left_the_dead_worker, timeout=timeout + grace + 1)
    assert time.monotonic() - killed_at <= timeout + grace + 1
    run = await world.finished(run_id, timeout=10)
    assert run["status"] == "succeeded"
    assert run["attempt"] == 2
    calls = (
        await world.db.scalars(select(ProviderCall.attempt).where(ProviderCall.run_id == run_id))
    ).all()
    assert calls == [2]  # the killed attempt reported nothing; nothing counted twice
    row = await world.agent_row(agent)
    assert row.status == "idle"
    assert row.tokens_used == await world.calls_tokens(agent) == run["usage"]["total_tokens"]
    transitions = (
        await world.db.execute(
            select(AgentEvent.to_status, AgentEvent.reason)
            .where(AgentEvent.agent_id == agent.id)
            .order_by(AgentEvent.seq)
        )
    ).all()
    assert [t for t, _ in transitions] == ["working", "waiting", "working", "idle"]


async def _ghost_claim(world: World, app, run_id: str) -> None:
    """Claim a run for a worker that then 'dies': it never heartbeats or finishes."""
    settings = app.state.settings.model_copy(update={"DB_POOL_SIZE": 1})
    db = await pipeline.Pipeline.connect(settings, "ghost:0:dead")
    ghost = attempt.WorkerState(
        app.state.sessionmaker,
        dispatch.of(app.state.sessionmaker()),  # type: ignore[arg-type]
        settings,
        "ghost:0:dead",
        db,
    )
    try:
        assert await executor.claim(ghost, uuid.UUID(run_id), 0) is not None
    finally:
        await db.close()


@pytest.mark.parametrize(("max_retries", "final"), [(0, "failed"), (1, "succeeded")])
async def test_a_dead_workers_run_is_retried_or_failed_and_its_agent_freed(
    world: World, app, start_worker, max_retries: int, final: str
) -> None:
    agent = await world.agent(await world.agent_type(max_retries=max_retries))
    run_id = (await world.submit(agent))["id"]  # no worker yet: its job waits in Redis
    await _ghost_claim(world, app, run_id)
    assert (await world.agent_row(agent)).status == "working"

    await start_worker()  # runs the stale job (refused by the claim) and the reaper

    run = await world.finished(run_id, timeout=8)
    assert run["status"] == final
    if final == "failed":
        assert run["attempt"] == 1
        assert run["error"]["code"] == "worker_lost"
    else:
        assert run["attempt"] == 2
        assert run["error"] is None
    assert (await world.agent_row(agent)).status == "idle"


async def test_flushed_redis_loses_no_queued_run(world: World, app, start_worker) -> None:
    agents = [await world.agent() for _ in range(3)]
    ids = [(await world.submit(a, f"run {n}"))["id"] for n, a in enumerate(agents)]
    ids.append((await world.submit(agents[0], "behind"))["id"])
    await app.state.redis.flushdb()  # the queue (and the event streams) are gone

    await start_worker()

    runs = [await world.finished(run_id, timeout=10) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 4


async def test_runs_submitted_while_redis_is_down_run_when_it_is_back(
    world: World, settings: Settings, start_worker
) -> None:
    agent = await world.agent()
    down = make_settings(settings.DATABASE_URL, closed_port_url(), QUEUE_NAME=settings.QUEUE_NAME)
    async with running_app(down) as (_, client):
        response = await client.post(
            world.runs_url(agent), json={"input": "later"}, headers=world.owner.headers
        )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"

    await start_worker()  # Redis is "back": the sweeper enqueues what was never enqueued

    assert (await world.finished(response.json()["id"]))["status"] == "succeeded"


async def test_a_stale_job_redelivery_is_harmless(world: World, app, worker) -> None:
    agent = await world.agent()
    run = await world.finished((await world.submit(agent))["id"])
    dispatcher = dispatch.of(app.state.sessionmaker())
    assert dispatcher is not None

    assert await dispatcher.enqueue(uuid.UUID(run["id"]), 0)  # attempt 0's job, again

    await asyncio.sleep(0.3)
    assert await world.run(run["id"]) == run
    calls = (
        await world.db.scalars(select(ProviderCall.id).where(ProviderCall.run_id == run["id"]))
    ).all()
    assert len(calls) == 1
    row = await world.agent_row(agent)
    assert (row.status, row.tasks_completed) == ("idle", 1)

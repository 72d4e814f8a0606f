"""Workers survive their servers: Redis and Postgres cut off and back (through a TCP proxy in
front of the worker only), a worker SIGKILLed between taking a job and claiming its run, a
budget reached by runs already queued, a large backlog swept fairly, and logs without SQL."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from backend import cli
from backend.config import Settings
from backend.projects.models import Project
from backend.runs import dispatch, tasks
from backend.runs.models import ProviderCall, Run
from backend.worker import AgentryWorker, run_worker
from tests.runs.conftest import World, eventually, spawn_worker_process
from tests.support.apps import captured_logs, running_app
from tests.support.proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def proxy_to(clean: None) -> AsyncIterator:
    proxies: list[Proxy] = []

    async def start(url: str) -> Proxy:
        proxy = await Proxy(url).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
async def workers(clean: None) -> AsyncIterator:
    started: list[AgentryWorker] = []

    async def start(settings: Settings) -> AgentryWorker:
        worker = await run_worker(settings)
        started.append(worker)  # type: ignore[arg-type]
        return worker  # type: ignore[return-value]

    yield start
    for worker in started:
        await worker.close()


async def _status(world: World, run_id: str) -> str | None:
    async with world.sessions() as session:
        return await session.scalar(select(Run.status).where(Run.id == run_id))


def _health_check(settings: Settings, path: Path) -> int:
    """`agentry worker-health`, as a container healthcheck runs it: its exit code."""
    env = {"ENVIRONMENT": "test", "SECRET_KEY": settings.secret_key}
    env |= {"WORKER_HEALTH_FILE": str(path), "WORKER_HEARTBEAT_SECONDS": "0.2"}
    return CliRunner().invoke(cli.app, ["worker-health"], env=env).exit_code


async def test_a_worker_rides_out_a_redis_outage_and_says_so(
    world: World, worker_settings: Settings, proxy_to, workers, settings: Settings, tmp_path: Path
) -> None:
    redis = await proxy_to(settings.REDIS_URL)
    health = tmp_path / "health.json"
    worker = await workers(
        worker_settings.model_copy(
            update={"REDIS_URL": redis.proxied_url, "WORKER_HEALTH_FILE": str(health)}
        )
    )
    await eventually(lambda: _async(_health_check(settings, health) == 0), timeout=5)
    agent = await world.agent()
    assert (await world.finished((await world.submit(agent, "before"))["id"]))["status"] == (
        "succeeded"
    )

    redis.cut()
    await eventually(lambda: _async(worker.health() == "unavailable (redis)"), timeout=5)
    async with running_app(settings, setup=lambda app: setattr(app.state, "worker", worker)) as (
        _,
        client,
    ):
        ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["worker"] == "unavailable (redis)"
    await eventually(lambda: _async(_health_check(settings, health) == 1), timeout=3)
    run_id = (await world.submit(agent, "during"))["id"]  # the API's Redis is fine
    await asyncio.sleep(1.0)
    assert not worker.main_task.done()  # it did not exit
    assert await _status(world, run_id) == "queued"

    await redis.restore()
    assert (await world.finished(run_id, timeout=10))["status"] == "succeeded"
    await eventually(lambda: _async(worker.health() == "ok"), timeout=5)
    await eventually(lambda: _async(_health_check(settings, health) == 0), timeout=3)
    await worker.close()
    assert _health_check(settings, health) == 1  # a stopped worker is not healthy


async def _async(value: object) -> object:
    return value


async def test_a_result_waits_for_postgres_and_is_committed_once(
    world: World, worker_settings: Settings, proxy_to, workers, settings: Settings
) -> None:
    database = await proxy_to(settings.DATABASE_URL)
    worker = await workers(
        worker_settings.model_copy(update={"DATABASE_URL": database.proxied_url})
    )
    agent = await world.agent(latency_ms=1500)
    run_id = (await world.submit(agent, "keep my tokens"))["id"]
    await eventually(lambda: _status_is(world, run_id, "running"), timeout=10)

    with captured_logs() as logs:
        database.cut()  # the provider call is in flight; it ends while Postgres is unreachable
        await asyncio.sleep(3.0)
    assert worker.health() == "unavailable (database)"
    assert await _status(world, run_id) == "running"
    # Its crons failed meanwhile (the sweeper runs every second): said by class, never by
    # the exception's text (SQL) or a stack.
    assert "cron_failed" in logs.getvalue()
    for leak in ("SELECT", "[SQL", "Traceback"):
        assert leak not in logs.getvalue()

    await database.restore()
    run = await world.finished(run_id, timeout=15)
    assert (run["status"], run["attempt"]) == ("succeeded", 1)  # the provider was not re-run
    calls = (
        await world.db.scalars(select(ProviderCall.attempt).where(ProviderCall.run_id == run_id))
    ).all()
    assert calls == [1]
    row = await world.agent_row(agent)
    assert row.status == "idle"
    assert row.tokens_used == await world.calls_tokens(agent) == run["usage"]["total_tokens"] > 0
    await eventually(lambda: _async(worker.health() == "ok"), timeout=5)


async def _status_is(world: World, run_id: str, status: str) -> bool:
    return await _status(world, run_id) == status


async def test_runs_queued_before_the_budget_was_spent_end_budget_exceeded(
    world: World, worker_settings: Settings, workers
) -> None:
    agent = await world.agent()
    project = await world.db.get(Project, world.project.id)
    assert project is not None
    project.monthly_token_limit = 20
    await world.db.commit()
    # All queued while nothing is spent; one run uses more than 20 tokens.
    ids = [(await world.submit(agent, f"run number {n} " * 5))["id"] for n in range(5)]

    await workers(worker_settings)

    runs = [await world.finished(run_id, timeout=10) for run_id in ids]
    assert runs[0]["status"] == "succeeded"
    assert runs[0]["usage"]["total_tokens"] > 20
    for run in runs[1:]:
        assert run["status"] == "failed"
        assert run["error"]["code"] == "budget_exceeded"
        assert run["usage"]["total_tokens"] == 0
    row = await world.agent_row(agent)
    assert (row.status, row.tokens_used) == ("idle", runs[0]["usage"]["total_tokens"])


@pytest.mark.slow
async def test_a_job_whose_worker_died_before_claiming_is_taken_again_within_its_lease(
    world: World, app, worker_settings: Settings, workers, engine: AsyncEngine, tmp_path: Path
) -> None:
    agent = await world.agent()
    lease = 2
    process = spawn_worker_process(
        worker_settings, tmp_path / "worker.log", WORKER_LEASE_SECONDS=lease
    )
    try:
        async with engine.connect() as holder:  # parks the worker's claim on the agent row
            await holder.execute(
                text("SELECT id FROM agents WHERE id = :id FOR NO KEY UPDATE"), {"id": agent.id}
            )
            first = (await world.submit(agent, "first"))["id"]
            taken = in_progress_key_prefix + dispatch.job_id(first, 0)
            await eventually(lambda: app.state.redis.exists(taken), timeout=30)
            await asyncio.sleep(0.2)  # inside its claim, waiting for the row
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            await holder.rollback()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    killed_at = time.monotonic()
    second = (await world.submit(agent, "second"))["id"]

    await workers(worker_settings)

    runs = [await world.finished(run_id, timeout=lease + 10) for run_id in (first, second)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert time.monotonic() - killed_at < lease + 10  # not ARQ's hour
    assert runs[0]["finished_at"] <= runs[1]["started_at"]  # in order, one at a time


async def test_the_sweeper_reaches_every_agent_of_a_large_backlog(
    world: World, app, worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "SWEEP_BATCH", 2)
    monkeypatch.setattr(tasks, "SWEEP_MIN_AGE", tasks.timedelta(0))
    agents = [await world.agent() for _ in range(5)]
    ids = [(await world.submit(a))["id"] for a in agents]
    await app.state.redis.flushdb()  # every job lost; only the sweeper can bring them back
    dispatcher = dispatch.of(app.state.sessionmaker())
    state = type("W", (), {"sessionmaker": world.sessions, "dispatcher": dispatcher})()
    state.sweep_after = None

    for _ in range(3):
        await tasks.sweep_runs({"runs": state})

    queued = await app.state.redis.zrange(worker_settings.QUEUE_NAME, 0, -1)
    assert sorted(q.decode() for q in queued) == sorted(dispatch.job_id(i, 0) for i in ids)


async def test_a_failing_job_is_logged_without_sql_or_stack(
    world: World, worker_settings: Settings, workers, engine: AsyncEngine
) -> None:
    agent = await world.agent()
    marker = uuid.uuid4().hex
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_run() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'refused % SELECT secret', NEW.id; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_run BEFORE UPDATE ON runs FOR EACH ROW "
                f"WHEN (NEW.input = '{marker}') EXECUTE FUNCTION refuse_run()"
            )
        )
    try:
        with captured_logs() as logs:
            await workers(worker_settings)
            run_id = (await world.submit(agent, marker))["id"]
            await eventually(lambda: _async("run_job_failed" in logs.getvalue()), timeout=10)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse_run ON runs"))
            await conn.execute(text("DROP FUNCTION refuse_run()"))
    out = logs.getvalue()
    line = next(line for line in out.splitlines() if "run_job_failed" in line)
    assert run_id in line
    assert "RaiseError" in line or "Error" in line
    for leak in ("SELECT", "UPDATE", "Traceback", "secret", marker):
        assert leak not in out

"""The queue's contract (backend/queue), what the runs domain relies on, on a real Redis and a
real QueueWorker: ids are unique while their job lives, deferred jobs wait, aborts stop a
running job, and a job whose worker died is taken again once its lease lapses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix

from backend.config import Settings
from backend.queue import jobs as queue_jobs
from backend.queue import worker as queue_worker
from tests.runs.conftest import eventually

LEASE = 1.0


class Recorder:
    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.runs: list[str] = []  # every start, in order
        self.finished: set[str] = set()
        self.cancelled: set[str] = set()

    async def job(self, ctx: dict[str, Any], key: str, seconds: float) -> None:
        self.started[key] = time.monotonic()
        self.runs.append(key)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.add(key)
            raise
        self.finished.add(key)


@pytest.fixture
async def queue(settings: Settings, app) -> AsyncIterator[tuple[queue_jobs.Jobs, Recorder, Any]]:
    name = f"agentry:test:queue:{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    workers: list[queue_worker.QueueWorker] = []

    async def nothing(ctx: dict[str, Any]) -> None:
        return None

    def start() -> queue_worker.QueueWorker:
        options = queue_worker.options(
            jobs=[queue_worker.Job(recorder.job, name="job", timeout=30, max_tries=5)],
            crons=[],
            redis_url=settings.REDIS_URL or "",
            queue_name=name,
            max_jobs=10,
            poll_delay=0.01,
            job_timeout=30,
            lease_seconds=LEASE,
            on_startup=nothing,
            on_shutdown=nothing,
            ctx={},
        )
        worker = queue_worker.QueueWorker(**options, handle_signals=False)
        worker.main_task = asyncio.create_task(worker.main())
        workers.append(worker)
        return worker

    yield queue_jobs.Jobs(app.state.redis, name), recorder, start
    for worker in workers:
        await worker.close()


async def _true(value: object) -> bool:
    return bool(value)


async def test_an_id_is_refused_while_its_job_lives_and_free_once_it_ran(queue) -> None:
    jobs, recorder, start = queue
    assert await jobs.enqueue("job", ("a", 0), "id-1")
    assert not await jobs.enqueue("job", ("b", 0), "id-1")  # the same id: refused
    start()
    await eventually(lambda: _true("a" in recorder.finished))
    assert "b" not in recorder.started
    await eventually(lambda: jobs.enqueue("job", ("c", 0), "id-1"))  # free once finished
    await eventually(lambda: _true("c" in recorder.finished))


async def test_a_deferred_job_waits_for_its_time(queue) -> None:
    jobs, recorder, start = queue
    start()
    queued_at = time.monotonic()
    assert await jobs.enqueue("job", ("later", 0), "id-2", defer=0.5)
    await eventually(lambda: _true("later" in recorder.finished), timeout=5)
    assert recorder.started["later"] - queued_at >= 0.45


async def test_an_abort_stops_a_running_job(queue) -> None:
    jobs, recorder, start = queue
    start()
    await jobs.enqueue("job", ("long", 30), "id-3")
    await eventually(lambda: _true("long" in recorder.started))
    await jobs.abort("id-3")
    await eventually(lambda: _true("long" in recorder.cancelled), timeout=5)
    assert await jobs.depth() == 0


async def test_a_job_taken_by_a_dead_worker_is_taken_again_after_its_lease(queue, app) -> None:
    jobs, recorder, start = queue
    await jobs.enqueue("job", ("orphan", 0), "id-4")
    # A worker took it (its lease) and died: nothing renews the lease.
    await app.state.redis.psetex(in_progress_key_prefix + "id-4", int(LEASE * 1000), b"1")
    taken_at = time.monotonic()
    start()
    await eventually(lambda: _true("orphan" in recorder.finished), timeout=LEASE + 5)
    assert recorder.started["orphan"] - taken_at >= LEASE * 0.8  # not before the lease lapsed


async def test_a_running_job_keeps_its_lease(queue, app) -> None:
    jobs, recorder, start = queue
    start()
    await jobs.enqueue("job", ("steady", 3 * LEASE), "id-5")
    await eventually(lambda: _true("steady" in recorder.started))
    start()  # a second worker must not take it while the first renews its lease
    await eventually(lambda: _true("steady" in recorder.finished), timeout=3 * LEASE + 5)
    assert recorder.runs == ["steady"]  # taken once, though it outlived three leases

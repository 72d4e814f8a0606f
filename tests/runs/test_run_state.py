"""The run state machine, through the statements production runs (backend/runs/pipeline.py):
every (from, to) pair, guards, a race with one winner, and no other writer of runs.status."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.core.db import create_sessionmaker
from backend.runs import pipeline, state
from backend.runs.models import Run, RunStatus
from backend.runs.pipeline import Conclusion as C
from tests.runs.conftest import World
from tests.support.writers import status_writers

S = RunStatus
ALLOWED = {
    (S.queued, S.running),
    (S.queued, S.cancelled),
    (S.running, S.queued),
    (S.running, S.succeeded),
    (S.running, S.failed),
    (S.running, S.cancelled),
    (S.running, S.timed_out),
    (S.running, S.requires_action),
    (S.requires_action, S.queued),
    (S.requires_action, S.cancelled),
    (S.requires_action, S.failed),
}
WORKER = "test:1:w"
# Every kind of conclusion, where it takes a run, and from where (a worker's conclusions end
# its running attempt; a cancel ends any unfinished run).
KINDS = {
    C.succeeded: (S.succeeded, {S.running}),
    C.failed: (S.failed, {S.running}),
    C.timed_out: (S.timed_out, {S.running}),
    C.retry: (S.queued, {S.running}),
    C.release: (S.queued, {S.running}),
    C.cancelled: (S.cancelled, {S.queued, S.running, S.requires_action}),
}


async def _run_in(world: World, status: RunStatus, agent_id: uuid.UUID | None = None) -> Run:
    agent_id = agent_id or (await world.agent()).id
    run = Run(
        project_id=world.project.id,
        agent_id=agent_id,
        input="x",
        provider="fake",
        model="fake-echo",
        attempt=1,
        worker_id=WORKER,
        status=status.value,  # test setup only: the row is born in this status
    )
    world.db.add(run)
    await world.db.commit()
    return run


def _job(run: Run, kind: C, **extra: object) -> dict:
    job = {"run_id": run.id, "agent_id": run.agent_id, "j_worker": WORKER, "j_attempt": 1}
    job |= {"j_provider": "fake", "j_output": "out", "j_model": "fake-echo"}
    job |= {"j_error": {"code": "x", "message": "y"}} if kind is not C.succeeded else {}
    return job | extra


async def _status(world: World, run: Run) -> str | None:
    return await world.db.scalar(
        select(Run.status).where(Run.id == run.id).execution_options(populate_existing=True)
    )


async def test_every_pair_of_every_conclusion(world: World) -> None:
    agent = await world.agent()
    for frm, (kind, (to, froms)) in itertools.product(S, KINDS.items()):
        run = await _run_in(world, frm, agent.id)
        rows = await pipeline.conclude_in(world.db, kind, [_job(run, kind)])
        await world.db.commit()
        assert state.is_allowed(frm, to) is ((frm, to) in ALLOWED)
        allowed = (frm, to) in ALLOWED and frm in froms
        assert [(r.from_status, r.moved) for r in rows if r.moved] == (
            [(frm.value, True)] if allowed else []
        ), (frm, kind)
        assert await _status(world, run) == (to.value if allowed else frm.value), (frm, kind)


async def test_every_pair_of_the_claim(world: World, settings) -> None:
    """queued -> running is the claim's only move (and only for the agent's oldest run)."""
    db = await pipeline.Pipeline.connect(settings, WORKER)
    try:
        for frm in S:
            run = await _run_in(world, frm)
            await world.db.execute(Run.__table__.update().where(Run.id == run.id).values(attempt=0))
            await world.db.commit()
            claimed = await db.claim(run.id, 0)
            assert (claimed is not None) is ((frm, S.running) in ALLOWED), frm
            assert await _status(world, run) == (S.running if claimed else frm).value
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("job", "why"),
    [
        ({"j_worker": "someone-else"}, "another worker's run"),
        ({"j_attempt": 2}, "another attempt"),
        ({"j_heartbeat": "2000-01-01T00:00:00+00:00"}, "a heartbeat since the reaper looked"),
    ],
)
async def test_a_guard_that_does_not_hold_moves_nothing(world: World, job: dict, why: str) -> None:
    run = await _run_in(world, S.running)
    rows = await pipeline.conclude_in(world.db, C.failed, [_job(run, C.failed, **job)])
    assert not any(row.moved for row in rows), why
    assert await _status(world, run) == "running"


async def test_a_missing_run_moves_nothing(world: World) -> None:
    job = {"run_id": uuid.uuid4(), "agent_id": (await world.agent()).id}
    assert await pipeline.conclude_in(world.db, C.cancelled, [job]) == []


async def test_concurrent_conclusions_from_one_status_have_one_winner(
    world: World, engine: AsyncEngine
) -> None:
    """Ten callers each end the running run, by every kind of conclusion: one wins."""
    run = await _run_in(world, S.running)
    sessionmaker = create_sessionmaker(engine)
    kinds = [C.succeeded, C.failed, C.cancelled, C.retry, C.timed_out] * 2

    async def attempt(kind: C) -> bool:
        async with sessionmaker() as session:
            rows = await pipeline.conclude_in(session, kind, [_job(run, kind)])
            await asyncio.sleep(0.05)  # hold the row locks a little: the others must wait
            await session.commit()
            return any(row.moved and row.from_status == "running" for row in rows)

    results = await asyncio.gather(*(attempt(k) for k in kinds))
    assert sum(results) == 1


def test_nothing_else_writes_run_status() -> None:
    """Only backend/runs/state.py writes runs.status; every other file embeds its transition."""
    assert set(status_writers("runs", "Run")) <= {"runs/state.py"}

"""The run state machine: every (from, to) pair, guards, and a race with one winner."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.core.db import create_sessionmaker
from backend.runs import state
from backend.runs.models import Run, RunStatus
from tests.runs.conftest import World

S = RunStatus
ALLOWED = {
    (S.queued, S.running),
    (S.queued, S.cancelled),
    (S.running, S.queued),
    (S.running, S.succeeded),
    (S.running, S.failed),
    (S.running, S.cancelled),
    (S.running, S.timed_out),
}


async def _run_in(world: World, status: RunStatus, agent_id: uuid.UUID | None = None) -> Run:
    agent_id = agent_id or (await world.agent()).id
    run = Run(
        project_id=world.project.id,
        agent_id=agent_id,
        input="x",
        provider="fake",
        model="fake-echo",
        status=status.value,  # test setup only: the row is born in this status
    )
    world.db.add(run)
    await world.db.commit()
    return run


async def test_every_pair(world: World) -> None:
    agent = await world.agent()
    for frm, to in itertools.product(S, S):
        run = await _run_in(world, frm, agent.id)
        moved = await state.transition_one(world.db, run.id, to)
        await world.db.commit()
        allowed = (frm, to) in ALLOWED
        assert state.is_allowed(frm, to) is allowed
        assert (moved is not None) is allowed, (frm, to)
        if moved is not None:
            assert (moved[0].status, moved[1]) == (to.value, frm)
        current = await world.db.scalar(
            select(Run.status).where(Run.id == run.id).execution_options(populate_existing=True)
        )
        assert current == (to.value if allowed else frm.value), (frm, to)


async def test_a_guard_that_does_not_hold_moves_nothing(world: World) -> None:
    run = await _run_in(world, S.running)
    moved = await state.transition_one(
        world.db, run.id, S.succeeded, guard=[Run.worker_id == "someone-else"]
    )
    assert moved is None


async def test_missing_run_moves_nothing(world: World) -> None:
    assert await state.transition_one(world.db, uuid.uuid4(), S.cancelled) is None


async def test_a_transition_needs_a_scope(world: World) -> None:
    with pytest.raises(ValueError, match="needs run_id"):
        await state.transition(world.db, S.cancelled)


async def test_concurrent_transitions_from_one_status_have_one_winner(
    world: World, engine: AsyncEngine
) -> None:
    """Ten callers each move the run out of `running`: one wins, the rest see it gone.

    `only_from` pins the source: without it running -> queued followed by queued ->
    cancelled would be two legal transitions, not a lost race."""
    run = await _run_in(world, S.running)
    sessionmaker = create_sessionmaker(engine)
    targets = [S.succeeded, S.failed, S.cancelled, S.queued, S.timed_out] * 2

    async def attempt(to: RunStatus) -> bool:
        async with sessionmaker() as session:
            moved = await state.transition_one(session, run.id, to, only_from=[S.running])
            await asyncio.sleep(0.05)  # hold the row lock a little: the others must wait
            await session.commit()
            return moved is not None

    results = await asyncio.gather(*(attempt(t) for t in targets))
    assert sum(results) == 1


async def test_a_retry_then_a_cancel_are_two_legal_moves(world: World) -> None:
    """Without `only_from`, queued is a source again once a retry put the run back."""
    run = await _run_in(world, S.running)
    assert await state.transition_one(world.db, run.id, S.queued) is not None
    moved = await state.transition_one(world.db, run.id, S.cancelled)
    assert moved is not None
    assert moved[1] == S.queued
    assert await state.transition_one(world.db, run.id, S.cancelled, only_from=[S.running]) is None


def test_nothing_else_writes_run_status() -> None:
    """Only backend/runs/state.py issues UPDATEs of runs.status (the style's grep test)."""
    root = Path(__file__).resolve().parents[2] / "backend"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "state.py" and path.parent.name == "runs":
            continue
        text = path.read_text()
        if "update(Run)" in text and "status=" in text.split("update(Run)", 1)[1][:400]:
            offenders.append(str(path))
    assert offenders == []

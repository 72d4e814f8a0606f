"""Redis restarted (empty) and Postgres stopped under running workers (DESIGN.md, Failure
behaviour): workers live through both, every run finishes, and a provider call answered while
Postgres was down is committed once when it is back, never paid for twice."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.faults import checks
from tests.faults.conftest import Scene
from tests.faults.harness import Proc, eventually

pytestmark = pytest.mark.faults

BOUND_SECONDS = 30  # every run final this long after the server is back
OUTAGE_SECONDS = 4  # longer than a heartbeat and a worker's TTL


def _dead(workers: list[Proc]) -> str:
    dead = [w for w in workers if not w.alive]
    return "; ".join(f"{w.name} exited {w.exit_code()}:\n{w.tail(15)}" for w in dead)


async def test_redis_restart(scene: Scene) -> None:
    """Redis stops while runs are in flight, submits keep being accepted (202) meanwhile, and it
    comes back empty: the workers are still running, every run finishes, and a run whose call
    spans the outage is not run again (one provider call)."""
    d, api, db, llm = scene.deployment, scene.api, scene.db, scene.llm
    agents = await api.agents(await api.agent_type(latency_ms=1500), 4)
    span = scene.text(3, "before")
    llm.hold(span)  # answered only after Redis is back
    for n, agent in enumerate(agents):
        await api.submit(agent, scene.text(n, "before"), api=n % 2)

    async def all_running() -> bool:
        rows = await db.fetch(
            "SELECT status FROM runs WHERE project_id = $1", uuid.UUID(api.project_id)
        )
        return [r["status"] for r in rows] == ["running"] * len(agents)

    await eventually(all_running, timeout=15, what="the first runs running")
    await asyncio.to_thread(d.cluster.stop_redis)
    try:
        for n, agent in enumerate(agents):  # accepted and persisted while Redis is down
            await api.submit(agent, scene.text(n, "during"), api=(n + 1) % 2)
        await asyncio.sleep(OUTAGE_SECONDS)
    finally:
        await asyncio.to_thread(d.cluster.start_redis_empty)
    for n, agent in enumerate(agents):
        await api.submit(agent, scene.text(n, "after"), api=n % 2)

    await asyncio.sleep(2)  # a worker that gave up on Redis has exited by now
    assert not _dead(d.workers), f"workers did not survive the Redis restart: {_dead(d.workers)}"
    llm.release(span)
    await checks.invariants(db, api, llm, scene.prefix, within=BOUND_SECONDS)
    final = await checks.statuses(db, api)
    assert set(final.values()) == {"succeeded"}
    assert len(final) == 3 * len(agents)
    assert len(llm.calls(span)) == 1, (
        f"a run in flight through the outage ran again: {llm.calls(span)}"
    )
    assert not _dead(d.workers), _dead(d.workers)


async def test_postgres_stopped_while_a_call_is_in_flight(scene: Scene) -> None:
    """The provider answers while Postgres is down: the worker keeps the answer and commits it
    when Postgres is back. The run succeeds at its first attempt, the stub saw exactly one call
    for it, and that call's usage is recorded once."""
    d, api, db, llm = scene.deployment, scene.api, scene.db, scene.llm
    [agent] = await api.agents(await api.agent_type(latency_ms=100, timeout_seconds=10), 1)
    held, after = scene.text(1), scene.text(2)
    llm.hold(held)
    run_id = (await api.submit(agent, held))["id"]
    await api.submit(agent, after)  # the agent's next run, dispatched by the first's end

    async def in_flight() -> bool:
        return any(c.in_flight for c in llm.calls(held))

    await eventually(in_flight, timeout=15, what=f"the provider call of {held!r}")
    await asyncio.to_thread(d.cluster.postgres.stop)
    try:
        llm.release(held)  # the answer arrives while Postgres is down

        async def delivered() -> bool:
            return bool(llm.delivered(held))

        await eventually(delivered, timeout=10, what="the answer delivered to the worker")
        await asyncio.sleep(OUTAGE_SECONDS)
    finally:
        await asyncio.to_thread(d.cluster.postgres.start)

    await checks.invariants(db, api, llm, scene.prefix, within=BOUND_SECONDS)
    calls = llm.calls(held)
    assert len(calls) == 1, f"the provider was called {len(calls)} times for one run: {calls}"
    run = await api.run(run_id)
    assert (run["status"], run["attempt"]) == ("succeeded", 1), run
    assert run["usage"]["input_tokens"] == calls[0].usage["prompt_tokens"]
    assert set((await checks.statuses(db, api)).values()) == {"succeeded"}
    assert not _dead(d.workers), _dead(d.workers)

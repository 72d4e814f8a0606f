"""Workers SIGKILLed mid-claim and mid-run (DESIGN.md invariants 2, 4, 5): the runs finish on
the other worker, in order, and every answered provider call is counted exactly once."""

from __future__ import annotations

import uuid

import pytest

from tests.faults import checks
from tests.faults.conftest import Scene
from tests.faults.harness import eventually

pytestmark = pytest.mark.faults

# After the fault clears, every run is final within this: a lease (3 s) or a reap (TTL 3 s +
# heartbeat staleness 2 s) plus a retry and the runs themselves, with room for a busy machine.
BOUND_SECONDS = 30


async def test_sigkill_worker_mid_claim(scene: Scene) -> None:
    """A worker that took a run's job and dies before claiming it (the repro of issue 8): the
    run and the agent's next one must not stay queued until the job's in-progress key expires.

    Deterministic: the test holds `FOR NO KEY UPDATE` on the agent row, so the only worker's
    claim (which locks the agent row `FOR UPDATE`) waits; the worker is killed there.
    """
    d, api, db = scene.deployment, scene.api, scene.db
    parked, other = d.workers
    other.terminate()  # the job goes to `parked`, the one we kill
    [agent] = await api.agents(await api.agent_type(latency_ms=100), 1)
    first, second = scene.text(1), scene.text(2)
    async with db.row_lock("agents", uuid.UUID(agent), "NO KEY UPDATE"):
        await api.submit(agent, first)
        await eventually(
            lambda: db.waiting_on_locks("agentry-worker"),
            timeout=15,
            what="the worker waiting on the agent row in its claim",
        )
        await api.submit(agent, second)  # queued behind the first
        parked.kill()
        other.start()  # a second worker is present when the lock goes
        await d.wait_ready(other)
    await checks.invariants(db, api, scene.llm, scene.prefix, within=BOUND_SECONDS)
    assert await checks.statuses(db, api) == {first: "succeeded", second: "succeeded"}


async def test_sigkill_worker_mid_run(scene: Scene) -> None:
    """A worker killed while its provider call is in flight: the call is never answered (and
    not counted); the run is retried on the other worker, and that call is counted once."""
    d, api, db, llm = scene.deployment, scene.api, scene.db, scene.llm
    agents = await api.agents(await api.agent_type(latency_ms=200), 2)
    held = scene.text("a", 1)
    llm.hold(held)  # its answer waits until we release it: the call stays in flight
    run_id = (await api.submit(agents[0], held))["id"]
    await api.submit(agents[0], scene.text("a", 2))
    for n in (1, 2):
        await api.submit(agents[1], scene.text("b", n))
    await eventually(
        lambda: _in_flight(scene, held), timeout=15, what=f"the provider call of {held!r}"
    )
    worker_id = await db.value("SELECT worker_id FROM runs WHERE id = $1", uuid.UUID(run_id))
    pid = int(worker_id.split(":")[-2])  # host:pid:nonce
    [victim] = [w for w in d.workers if w.alive and w.pid == pid]
    victim.kill()
    await eventually(
        lambda: _disconnected(scene, held), timeout=10, what="the killed call's disconnect"
    )
    llm.release(held)

    await checks.invariants(db, api, llm, scene.prefix, within=BOUND_SECONDS)
    assert set((await checks.statuses(db, api)).values()) == {"succeeded"}
    calls = llm.calls(held)
    assert [(c.delivered, c.disconnected) for c in calls] == [(False, True), (True, False)]
    attempts = await db.fetch(
        "SELECT attempt FROM provider_calls WHERE run_id = $1", uuid.UUID(run_id)
    )
    assert [r["attempt"] for r in attempts] == [2]  # the retry's call only
    assert (await api.run(run_id))["attempt"] == 2


async def _in_flight(scene: Scene, text: str) -> bool:
    return any(c.input == text and c.in_flight for c in scene.llm.calls(text))


async def _disconnected(scene: Scene, text: str) -> bool:
    return any(c.input == text and c.disconnected for c in scene.llm.calls(text))

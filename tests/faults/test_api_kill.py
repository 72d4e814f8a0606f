"""An API process SIGKILLed during a burst of submits with Idempotency-Keys, the client retrying
each failed request on the other API process with the same key (API.md, Idempotency): exactly
one run per key, and every run final.

Deterministic: the test holds `FOR UPDATE` on one agent's row, so that agent's submits on the
first API wait inside their transactions (their idempotency keys inserted, not committed) when
the process is killed; the retries on the second API then wait for those dead transactions.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.faults import checks
from tests.faults.conftest import Scene
from tests.faults.harness import eventually

pytestmark = pytest.mark.faults

BOUND_SECONDS = 30
PARKED = 3  # submits in flight on the killed API


async def test_sigkill_api_during_idempotent_burst(scene: Scene) -> None:
    d, api, db = scene.deployment, scene.api, scene.db
    agents = await api.agents(await api.agent_type(latency_ms=50), 3)
    submitted: dict[str, tuple[str, str, str]] = {}  # key -> agent, input, run id
    count = 0

    async def submit(agent: str, first_api: int, tries: list[int] | None = None) -> list[str]:
        nonlocal count
        count += 1
        key, text = scene.text("key", count), scene.text("run", count)
        run, failures = await api.submit_with_failover(
            agent, text, key, first_api=first_api, tries=tries
        )
        submitted[key] = (agent, text, run["id"])
        return failures

    # Before the kill: a burst on both APIs.
    await asyncio.gather(*(submit(agents[n % 3], n % 2) for n in range(6)))

    # During: the first agent's submits park on api1, which is killed under them.
    tries: list[list[int]] = [[] for _ in range(PARKED)]
    async with db.row_lock("agents", uuid.UUID(agents[0]), "UPDATE"):
        parked = [asyncio.create_task(submit(agents[0], 0, tries[n])) for n in range(PARKED)]
        others = [asyncio.create_task(submit(agents[1 + n % 2], n % 2)) for n in range(4)]
        await eventually(
            lambda: _at_least(db.waiting_on_locks("agentry"), PARKED),
            timeout=15,
            what="the submits waiting on the agent row",
        )
        d.apis[0].kill()

        async def all_retried() -> bool:
            return all(len(t) >= 2 for t in tries)

        await eventually(all_retried, timeout=15, what="every parked submit retried on api2")
        await asyncio.sleep(0.5)  # the retries reach the database and wait there
    failures = await asyncio.gather(*parked)
    await asyncio.gather(*others)
    assert all(failures), f"a parked submit never met the killed API: {failures}"

    # After: api1 refuses connections; the client fails over at once.
    await asyncio.gather(*(submit(agents[n % 3], 0) for n in range(3)))

    rows = await db.fetch(
        "SELECT id, input FROM runs WHERE project_id = $1", uuid.UUID(api.project_id)
    )
    by_input: dict[str, list[str]] = {}
    for row in rows:
        by_input.setdefault(row["input"], []).append(str(row["id"]))
    duplicates = {text: ids for text, ids in by_input.items() if len(ids) > 1}
    assert not duplicates, f"one key made several runs: {duplicates}"
    assert sorted(run_id for *_, run_id in submitted.values()) == sorted(str(r["id"]) for r in rows)
    for key, (agent, text, run_id) in submitted.items():  # a replay answers the same run
        replay, _ = await api.submit_with_failover(agent, text, key, first_api=1)
        assert replay["id"] == run_id, key
    await checks.invariants(db, api, scene.llm, scene.prefix, within=BOUND_SECONDS)
    assert set((await checks.statuses(db, api)).values()) == {"succeeded"}


async def _at_least(value, minimum: int) -> bool:
    return await value >= minimum

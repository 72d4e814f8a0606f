"""I/O-bound runs of different agents run concurrently on one worker (not serialized)."""

from __future__ import annotations

import asyncio
import time

from tests.runs.conftest import World


async def test_twenty_one_second_runs_finish_together(world: World, worker) -> None:
    agent_type = await world.agent_type(config={"latency_ms": 1000})
    agents = [await world.agent(agent_type) for _ in range(20)]
    started = time.monotonic()

    submitted = await asyncio.gather(*(world.submit(a) for a in agents))
    runs = await asyncio.gather(*(world.finished(r["id"], timeout=15) for r in submitted))

    elapsed = time.monotonic() - started
    assert [r["status"] for r in runs] == ["succeeded"] * 20
    assert elapsed < 10, f"20 one-second runs took {elapsed:.1f} s: they were serialized"

"""Runs parked in `requires_action` for API tests, through the worker's own code: the claim of
backend/runs/pipeline.py (asyncpg), then a model step that asks for tool calls and parks the
run (the state machines' and the steps' fragments), as the worker's step loop does."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from backend.agents import state as agent_state
from backend.agents.models import Agent, AgentStatus
from backend.runs import state as run_state
from backend.runs import steps, streams
from backend.runs.models import RunStatus
from backend.runs.pipeline import Pipeline

if TYPE_CHECKING:
    from tests.runs.conftest import World

WORKER = "test-worker"


def _park_sql() -> str:
    run_old, run_new = run_state.transition_ctes(
        RunStatus.requires_action,
        only_from={RunStatus.running},
        guard="o.worker_id = o.j_worker",
        values={
            "required_action": "o.j_action",
            "action_expires_at": "(o.j_action ->> 'expires_at')::timestamptz",
            "worker_id": "NULL",
            "heartbeat_at": "NULL",
        },
        counters=steps.STEPS_SET,
        joins=steps.STEPS_JOIN,
    )
    agents = agent_state.transition_ctes(
        AgentStatus.waiting,
        agents="SELECT agent_id FROM run_old",
        only_from={AgentStatus.working},
        reason="'run requires action'",
    )
    job = """
job AS (SELECT CAST(:run_id AS uuid) AS run_id, CAST(:worker AS text) AS j_worker,
    CAST(:action AS jsonb) AS j_action)"""
    ctes = [job, run_old, steps.insert_ctes(when="o.status = 'running'"), run_new, agents]
    sql = f"WITH {','.join(ctes)}\nSELECT rn.moved FROM run_new rn"
    return re.sub(r"(?<![:\w]):([a-z_]+)::([a-z]+)", r"CAST(:\1 AS \2)", sql)


_PARK = text(_park_sql())


@dataclass
class Parker:
    world: World
    pipe: Pipeline
    publisher: streams.Publisher

    async def park(
        self,
        agent: Agent,
        *,
        kind: str = "submit_tool_outputs",
        calls: list[dict[str, Any]] | None = None,
        expires_in: float = 3600,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Submit a run (unless `run_id`), claim it, end a model step asking for `calls`
        (default: one `lookup`) and park the run; the run as GET answers it."""
        if run_id is None:
            run_id = (await self.world.submit(agent))["id"]
        run = await self.world.run(run_id)
        claimed = await self.pipe.claim(uuid.UUID(run_id), run["attempt"])
        assert claimed is not None, "the run could not be claimed"
        calls = calls or [{"name": "lookup", "arguments": {"q": "gamma"}}]
        index = run["steps"]
        tool_calls = [
            {"id": f"call_{index}_{i}", "name": c["name"], "arguments": c["arguments"]}
            for i, c in enumerate(calls)
        ]
        now = datetime.now(UTC)
        action = {
            "type": kind,
            "tool_calls": tool_calls,
            "expires_at": (now + timedelta(seconds=expires_in)).isoformat(),
        }
        model_step = steps.row(
            run_id,
            index,
            "model",
            "succeeded",
            claimed["attempt"],
            provider="fake",
            model="fake-echo",
            text="",
            tool_calls=tool_calls,
            started_at=now,
            finished_at=now,
        )
        async with self.world.sessions() as session:
            await session.execute(
                text("SELECT FROM agents WHERE id = :id FOR UPDATE"), {"id": agent.id}
            )
            params = {
                "run_id": run_id,
                "worker": WORKER,
                "action": json.dumps(action),
                "steps": json.dumps([model_step]),
            }
            assert await session.scalar(_PARK, params)
            await session.commit()
        waiting = [
            (streams.STATUS, {"status": "requires_action"}),
            (streams.REQUIRES_ACTION, action),
        ]
        await self.publisher.publish(uuid.UUID(run_id), waiting)
        return await self.world.run(run_id)

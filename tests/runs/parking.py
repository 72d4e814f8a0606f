"""Runs parked in `requires_action` for API tests, through the worker's own code
(backend/runs/pipeline.py): its claim, then its `requires_action` conclusion with a model step
that asked for tool calls (and that step's provider call), then the events the worker
publishes after that commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.agents.models import Agent
from backend.runs import steps, streams
from backend.runs.pipeline import Conclusion, Pipeline
from backend.usage import service as usage
from backend.usage.tokens import Usage

if TYPE_CHECKING:
    from tests.runs.conftest import World

WORKER = "test-worker"
# The parked model step's provider call.
INPUT_TOKENS, OUTPUT_TOKENS = 5, 10


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
        index, attempt = run["steps"], claimed["attempt"]
        calls = calls or [{"name": "lookup", "arguments": {"q": "gamma"}}]
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
            attempt,
            provider="fake",
            model="fake-echo",
            text="",
            tool_calls=tool_calls,
            started_at=now,
            finished_at=now,
        )
        spent = Usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
        priced = usage.priced_calls(
            uuid.UUID(run_id), "fake", [("fake-echo", spent, True, None, index)], at=now
        )
        job = {
            "run_id": run_id,
            "agent_id": str(agent.id),
            "j_worker": WORKER,
            "j_attempt": attempt,
            "j_provider": "fake",
            "j_action": action,
        }
        parked = await self.pipe.conclude(Conclusion.requires_action, job, priced, [model_step])
        assert parked is not None
        assert parked["moved"]
        waiting = [(streams.STATUS, {"status": "requires_action"})]
        await self.publisher.publish(
            uuid.UUID(run_id), [*waiting, (streams.REQUIRES_ACTION, action)]
        )
        return await self.world.run(run_id)

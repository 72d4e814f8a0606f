"""Budgets hold at claim too (issue 8, d): runs queued before the project's limit was reached
end `failed` with `budget_exceeded` when their turn comes, and never call the provider."""

from __future__ import annotations

import pytest

from tests.faults import checks
from tests.faults.conftest import Scene
from tests.faults.harness import eventually

pytestmark = pytest.mark.faults

BOUND_SECONDS = 30


async def test_runs_queued_before_the_budget_was_spent_do_not_run(scene: Scene) -> None:
    api, db, llm = scene.api, scene.db, scene.llm
    # Every stub call costs more than 100 tokens: the first run alone spends the budget.
    budget = {"budget": {"monthly_token_limit": 100}}
    await api.ok("PATCH", f"/projects/{api.project_id}", 200, json=budget)
    [agent] = await api.agents(await api.agent_type(latency_ms=50), 1)
    first, *queued = (scene.text(n) for n in (1, 2, 3))
    llm.hold(first)
    run_ids = [(await api.submit(agent, text))["id"] for text in (first, *queued)]

    async def in_flight() -> bool:
        return any(c.in_flight for c in llm.calls(first))

    await eventually(in_flight, timeout=15, what=f"the provider call of {first!r}")
    llm.release(first)  # its usage spends the budget; the other two are still queued

    await checks.invariants(db, api, llm, scene.prefix, within=BOUND_SECONDS)
    assert await checks.statuses(db, api) == {
        first: "succeeded",
        queued[0]: "failed",
        queued[1]: "failed",
    }
    for run_id, text in zip(run_ids[1:], queued, strict=True):
        assert (await api.run(run_id))["error"]["code"] == "budget_exceeded"
        assert llm.calls(text) == [], f"{text!r} called the provider past the budget"
    refused = await api.call("POST", api.runs_path(agent), json={"input": scene.text(4)})
    assert refused.status_code == 402, refused.text

"""Budgets through the API: PATCH /projects/{id} sets them, POST …/runs answers 402 when spent."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from backend.core.db import utcnow
from backend.runs.models import Run
from backend.usage.tokens import Usage
from tests.usage.conftest import World, record_call

MICRO = {"input_per_mtok_usd": "1", "output_per_mtok_usd": "1"}  # 1 token = $0.000001


@pytest.fixture
def runs_api(app) -> None:
    submit = app.openapi()["paths"].get("/api/v1/projects/{project_id}/agents/{agent_id}/runs")
    if not submit or "post" not in submit:
        pytest.skip("the runs router is not mounted yet")


async def spend(world: World, agent, tokens: int) -> None:
    run = await world.run(agent, provider="fake", model="fake-1")
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="fake",
        model="fake-1",
        usage=Usage(input_tokens=tokens),
        succeeded=True,
        pricing_override=MICRO,
        at=utcnow(),
    )
    await world.db.commit()


async def test_budget_set_spent_raised_and_removed_through_the_api(
    client, world: World, runs_api
) -> None:
    headers = world.owner.headers
    agent = await world.agent()
    project_url = f"/api/v1/projects/{world.project.id}"
    submit_url = f"{project_url}/agents/{agent.id}/runs"

    async def set_budget(budget) -> None:
        response = await client.patch(project_url, json={"budget": budget}, headers=headers)
        assert response.status_code == 200, response.text

    async def submit() -> int:
        return (await client.post(submit_url, json={"input": "hi"}, headers=headers)).status_code

    await set_budget({"monthly_cost_limit_usd": "0.01"})
    assert await submit() == 202
    await spend(world, agent, 9_999)
    assert await submit() == 202  # $0.009999 of $0.01
    await spend(world, agent, 1)
    refused = await client.post(submit_url, json={"input": "hi"}, headers=headers)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    metrics = (await client.get(f"{project_url}/metrics", headers=headers)).json()
    assert metrics["budget"]["exhausted"] is True

    await set_budget({"monthly_cost_limit_usd": "0.02"})
    assert await submit() == 202
    await set_budget({"monthly_token_limit": 10_000})  # replaces the cost limit
    assert await submit() == 402
    await set_budget(None)
    assert await submit() == 202


async def test_concurrent_burst_of_submits_on_a_spent_budget_inserts_nothing(
    client, world: World, runs_api
) -> None:
    agent = await world.agent()
    await world.set_budget(cost="0.001")
    await spend(world, agent, 1000)
    before = await world.db.scalar(select(func.count()).select_from(Run))
    url = f"/api/v1/projects/{world.project.id}/agents/{agent.id}/runs"
    responses = await asyncio.gather(
        *(client.post(url, json={"input": "x"}, headers=world.owner.headers) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [402] * 20
    assert await world.db.scalar(select(func.count()).select_from(Run)) == before

"""`run.requires_action` as a receiver sees it: written by the statement that parks the run,
with the run as GET returns it and its required action."""

from __future__ import annotations

from standardwebhooks import Webhook

from tests.runs.conftest import World, eventually
from tests.webhooks.conftest import Hooks

LOOKUP = {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}


async def test_a_parked_run_sends_run_requires_action(
    world: World, hooks: Hooks, receivers, worker
) -> None:
    receiver = await receivers()
    hook = await hooks.create(receiver.url, events=["run.requires_action"])
    script = [{"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}]}]
    agent_type = await world.agent_type(config={"script": script}, tools=[LOOKUP])
    agent = await world.agent(agent_type)
    run_id = (await world.submit(agent, "ask"))["id"]

    async def parked() -> bool:
        return (await world.run(run_id))["status"] == "requires_action"

    await eventually(parked)
    await hooks.settled(hook["id"], 1)

    [received] = receiver.requests
    event = Webhook(hook["secret"]).verify(received.body, received.headers)
    assert event["type"] == "run.requires_action"
    run = await world.run(run_id)
    assert event["data"]["run"] == run
    assert event["data"]["required_action"] == run["required_action"]
    assert run["required_action"]["tool_calls"][0]["name"] == "lookup"

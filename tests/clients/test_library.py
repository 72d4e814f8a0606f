"""The Python library against the live server: every page of a list, errors mapped to their
classes with the envelope's fields, the retry policy, streams, AsyncClient, and client tools,
approvals and steps."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from agentry_client import (
    AsyncClient,
    BudgetExceeded,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    ToolError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from agentry_client.models import Agent, Event, Run, Step

from tests.clients.conftest import Live, free_port
from tests.clients.proxy import FORWARD, Action, Proxy, Seen, respond


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.url, api_key=live.api_key, retry_seconds=5) as c:
        yield c


def test_lists_iterate_over_every_page(client: Client, live: Live) -> None:
    project = live.project()
    echo = client.agent_types.get("echo").id
    with httpx.Client(headers=live.headers()) as h:
        for n in range(105):  # more than the largest page (100)
            body = {"agent_type_id": echo, "name": f"a{n:03}"}
            assert h.post(f"{live.api}/projects/{project['id']}/agents", json=body).is_success
    agents = list(client.agents.list(project["slug"]))
    assert all(isinstance(a, Agent) for a in agents)
    assert sorted(a.name for a in agents) == [f"a{n:03}" for n in range(105)]
    pages = [
        live.get(f"/projects/{project['id']}/agents", params={"page": p, "limit": 100})["data"]
        for p in (1, 2)
    ]
    assert [a.raw for a in agents] == pages[0] + pages[1]


def test_errors_carry_the_envelope(client: Client, live: Live) -> None:
    project = live.project()
    with pytest.raises(NotFound) as missing:
        client.runs.get(project["id"], str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.request_id

    with pytest.raises(NotFound) as unnamed:
        client.projects.get("no-such-slug")
    assert (unnamed.value.status, unnamed.value.request_id) == (None, None)

    agent = client.agents.spawn(project["slug"], agent_type="echo", name="e")
    client.agents.terminate(project["slug"], agent.id)
    with pytest.raises(Conflict) as conflict:
        client.agents.terminate(project["slug"], agent.id)
    assert (conflict.value.code, conflict.value.field) == ("invalid_transition", "status")

    with pytest.raises(ValidationError) as invalid:
        client.projects.create("x", slug="Not A Slug!")
    assert invalid.value.status == 422
    assert invalid.value.field

    with Client(live.url, api_key="agy_nope") as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.auth.me()


def test_submit_waits_and_budget_is_an_error(client: Client, live: Live) -> None:
    project = live.project(monthly_token_limit=1)
    agent = client.agents.spawn(project["slug"], agent_type="echo", name="w")
    run = client.runs.submit(project["slug"], "w", "hello there", wait=30)
    assert isinstance(run, Run)
    assert (run.status, run.output, run.agent_id) == ("succeeded", "echo: hello there", agent.id)
    events = list(client.runs.stream(project["slug"], run.id))
    assert events[-1].event == "end"
    assert events[-1].data["id"] == run.id
    with pytest.raises(BudgetExceeded):
        client.runs.submit(project["slug"], agent.id, "more")


def _proxy(live: Live, decide) -> Proxy:
    return Proxy(urlparse(live.url).port, decide)  # type: ignore[arg-type]


def test_retry_policy_honours_retry_after_and_spares_non_idempotent_posts(live: Live) -> None:
    answered: list[int] = []

    def decide(index: int, seen: Seen) -> Action:
        if seen.path.startswith("/api/v1/projects") and not answered:
            answered.append(index)
            return respond(503, Retry_After="1")
        return FORWARD

    proxy = _proxy(live, decide)
    try:
        with Client(proxy.url, api_key=live.api_key, retry_seconds=5) as c:
            started = time.monotonic()
            assert isinstance(list(c.projects.list()), list)
            assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
            answered.clear()
            with pytest.raises(Unavailable):
                c.projects.create("never")  # a POST without a key is never repeated
        assert len(proxy.matching("POST", "/projects")) == 1
    finally:
        proxy.close()

    with Client(f"http://127.0.0.1:{free_port()}", retry_seconds=0.5) as c:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            c.projects.get(str(uuid.uuid4()))
        assert time.monotonic() - started < 5  # the budget bounds the retries


def test_api_keys(client: Client, live: Live) -> None:
    with Client(live.url, token=live.token, api_key="") as user:
        key = user.api_keys.create("temporary", scopes=["projects:read"])
        assert key.key
        listed = {k.id: k for k in user.api_keys.list()}
        assert listed[key.id].key is None  # shown only at creation
        with Client(live.url, api_key=key.key) as by_key:
            assert isinstance(list(by_key.projects.list()), list)
            user.api_keys.delete(key.id)
            with pytest.raises(Unauthorized):
                list(by_key.projects.list())


async def test_async_client(live: Live) -> None:
    project = live.project()
    async with AsyncClient(live.url, api_key=live.api_key) as c:
        agent = await c.agents.spawn(project["slug"], agent_type="echo", name="async")
        run = await c.runs.submit(project["slug"], agent.name, "hi")
        events = [e async for e in c.runs.stream(project["slug"], run.id)]
        assert [a.id async for a in c.agents.list(project["slug"])] == [agent.id]
        assert (await c.runs.get(project["slug"], run.id)).status == "succeeded"
    assert events[-1].event == "end"
    assert "".join(e.data["text"] for e in events if e.event == "delta") == "echo: hi"


# --- tools (the seeded tool-demo type and its demo MCP server) -----------------------------

LOOKUP_ARGS = {"query": "weather in Paris"}  # what tool-demo's script asks `lookup`


def test_run_with_tools_answers_client_tools(client: Client, live: Live) -> None:
    project = live.project()["slug"]
    agent = client.agents.spawn(project, agent_type="tool-demo", name="demo")
    seen = []

    def lookup(arguments: dict) -> dict:
        seen.append(arguments)
        return {"sky": "clear"}  # not a string: submitted as JSON

    run = client.runs.run_with_tools(project, agent.id, "go", tools={"lookup": lookup})
    assert seen == [LOOKUP_ARGS]
    assert (run.status, run.output, run.steps) == ("succeeded", 'echo: {"sky": "clear"}', 5)

    def missing(arguments: dict) -> str:
        raise ToolError("not found: " + arguments["query"])

    run = client.runs.run_with_tools(project, "demo", "go", tools={"lookup": missing})
    assert (run.status, run.output) == ("succeeded", "echo: not found: weather in Paris")
    steps = list(client.runs.steps(project, run.id))
    assert all(isinstance(s, Step) for s in steps)
    assert [(s.kind, s.executor) for s in steps] == [
        ("model", None),
        ("tool", "server"),
        ("model", None),
        ("tool", "client"),
        ("model", None),
    ]
    assert (steps[3].output, steps[3].is_error, steps[3].arguments) == (
        "not found: weather in Paris",
        True,
        LOOKUP_ARGS,
    )


def test_wait_stops_at_an_approval_then_answers_the_client_tool(client: Client, live: Live) -> None:
    """One model step asks for a server tool that needs approval and a client tool: the run
    waits for the approval first (which no tool function gives), then for the client tool."""
    project = live.project()["slug"]
    calls = [
        {"name": "demo__add", "arguments": {"a": 2, "b": 3}},
        {"name": "lookup", "arguments": LOOKUP_ARGS},
    ]
    server = {"name": "demo", "url": live.demo_mcp_url(), "require_approval": "always"}
    lookup = {"name": "lookup", "description": "", "input_schema": {"type": "object"}}
    kind = live.agent_type(
        config={"script": [{"tool_calls": calls}]}, mcp_servers=[server], tools=[lookup]
    )
    agent = client.agents.spawn(project, agent_type=kind["slug"], name="careful")
    run = client.runs.submit(project, agent.id, "go")
    seen = []

    def answer(arguments: dict) -> str:
        seen.append(arguments)
        return "L"

    tools = {"demo__add": answer, "lookup": answer}
    waiting = client.runs.wait(project, run.id, tools=tools, timeout=60)
    assert (waiting.status, waiting.required_action["type"]) == (
        "requires_action",
        "approve_tool_calls",
    )
    [call] = waiting.required_action["tool_calls"]
    assert call["name"] == "demo__add"
    assert seen == []  # not even the client tool of the same step: its turn comes after
    queued = client.runs.approve(project, run.id, [{"tool_call_id": call["id"], "approve": True}])
    assert isinstance(queued, Run)
    assert (queued.status, queued.required_action) == ("queued", None)
    done = client.runs.wait(project, run.id, tools=tools, timeout=60)
    assert (done.status, done.output) == ("succeeded", "echo: 5\nL")  # in call order
    assert seen == [LOOKUP_ARGS]


def test_wait_passes_over_an_action_already_answered(client: Client, live: Live) -> None:
    """Following a run from its start replays its `requires_action` event; once answered (the
    run is queued behind its paused agent here), waiting goes on to the end."""
    project = live.project()["slug"]
    agent = client.agents.spawn(project, agent_type="tool-demo", name="demo")
    run = client.runs.submit(project, agent.id, "go")
    waiting = client.runs.wait(project, run.id, timeout=60)  # no tools: returns at the action
    assert waiting.status == "requires_action"
    client.agents.pause(project, agent.id)
    [call] = waiting.required_action["tool_calls"]
    answer = [{"tool_call_id": call["id"], "output": "sunny"}]
    assert client.runs.submit_tool_outputs(project, run.id, answer).status == "queued"

    answered = []

    def resume_once_answered(event: Event) -> None:
        # The replayed answer: the lookup's result, then `queued`. Resume the agent only then,
        # so the run is still queued when its `requires_action` event is replayed.
        if event.event == "tool_result" and event.data["tool_call_id"] == call["id"]:
            answered.append(event)
        elif answered and event.data == {"status": "queued"}:
            client.agents.resume(project, agent.id)

    def never(arguments: dict) -> str:
        raise AssertionError("the action was answered already")

    done = client.runs.wait(
        project, run.id, tools={"lookup": never}, on_event=resume_once_answered, timeout=60
    )
    assert (done.status, done.output) == ("succeeded", "echo: sunny")


async def test_async_run_with_tools(live: Live) -> None:
    project = live.project()["slug"]
    seen = []

    async def lookup(arguments: dict) -> str:
        seen.append(arguments)
        return "rain"

    async with AsyncClient(live.url, api_key=live.api_key) as c:
        agent = await c.agents.spawn(project, agent_type="tool-demo", name="async")
        run = await c.runs.run_with_tools(project, agent.name, "go", tools={"lookup": lookup})
        steps = [s async for s in c.runs.steps(project, run.id)]
        # An output the server cannot take (a NUL) is sent again as an error saying why.
        refused = await c.runs.run_with_tools(
            project, agent.id, "go", tools={"lookup": lambda _: "a\0b"}
        )
    assert seen == [LOOKUP_ARGS]
    assert (run.status, run.output) == ("succeeded", "echo: rain")
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    assert refused.status == "succeeded"
    assert refused.output.startswith("echo: the tool's output was refused by the Agentry server: ")

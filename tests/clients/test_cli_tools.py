"""--tool and exit 9 against a stub of API.md's required-action endpoints: the server has no
client tools yet (no run can reach `requires_action` there), so these are unit tests of
the CLI's side of the contract, and the library's run_with_tools."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from agentry_client import Client, ToolError

from tests.clients.stub import AGENT, PROJECT, RUN, ToolRunStub


@pytest.fixture
def stub(request) -> Iterator[ToolRunStub]:
    stub = ToolRunStub(*getattr(request, "param", ()))
    yield stub
    stub.close()


UPPER = f"{sys.executable} -c 'import json,sys; print(json.load(sys.stdin)[\"q\"].upper())'"


def _submit(ctl, stub: ToolRunStub, *extra: str):
    args = ("runs", "submit", "-p", PROJECT, "-a", AGENT, "-i", "look it up", "--wait", "20")
    return ctl(*args, *extra, env={"AGENTRY_URL": stub.url})


def test_tool_command_answers_the_required_action(ctl, stub: ToolRunStub) -> None:
    r = _submit(ctl, stub, "--tool", f"lookup={UPPER}")
    assert r.code == 0, r.stderr
    assert stub.posted == [
        {"tool_outputs": [{"tool_call_id": "call_1", "output": "GAMMA", "is_error": False}]}
    ]
    assert json.loads(r.stdout)["output"] == "echo: GAMMA"


def test_failing_tool_command_submits_an_error_result(ctl, stub: ToolRunStub) -> None:
    r = _submit(ctl, stub, "--tool", "lookup=echo no such thing; exit 3")
    assert r.code == 0, r.stderr
    assert stub.posted[0]["tool_outputs"] == [
        {"tool_call_id": "call_1", "output": "no such thing", "is_error": True}
    ]


def test_an_action_no_tool_covers_exits_9_and_prints_the_run(ctl, stub: ToolRunStub) -> None:
    r = _submit(ctl, stub, "--tool", "other=cat")
    assert r.code == 9, r.stderr
    run = json.loads(r.stdout)
    assert run["status"] == "requires_action"
    assert run["required_action"]["tool_calls"][0]["name"] == "lookup"
    assert stub.posted == []
    assert _submit(ctl, stub).code == 9


@pytest.mark.parametrize("stub", [("approve_tool_calls",)], indirect=True)
def test_an_approval_exits_9_even_with_the_tool(ctl, stub: ToolRunStub) -> None:
    r = _submit(ctl, stub, "--tool", f"lookup={UPPER}")
    assert r.code == 9
    assert stub.posted == []


@pytest.mark.parametrize("stub", [("approve_tool_calls",)], indirect=True)
def test_approve_posts_the_decisions(ctl, stub: ToolRunStub) -> None:
    args = ("runs", "approve", "-p", PROJECT, RUN, "--call", "call_1", "--deny", "-m", "no")
    r = ctl(*args, env={"AGENTRY_URL": stub.url})
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "queued"
    assert stub.posted == [
        {"decisions": [{"tool_call_id": "call_1", "approve": False, "message": "no"}]}
    ]


def test_library_run_with_tools(stub: ToolRunStub) -> None:
    seen = []

    def lookup(arguments: dict) -> str:
        seen.append(arguments)
        raise ToolError("not found: " + arguments["q"])

    with Client(stub.url, api_key="k") as client:
        run = client.runs.run_with_tools(PROJECT, AGENT, "look it up", tools={"lookup": lookup})
    assert seen == [{"q": "gamma"}]
    assert (run.id, run.status, run.output) == (RUN, "succeeded", "echo: not found: gamma")
    assert stub.posted[0]["tool_outputs"][0]["is_error"] is True

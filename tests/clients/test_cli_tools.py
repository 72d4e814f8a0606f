"""agentryctl and tools against the live server (`agentry dev`: its demo MCP server, the
seeded `tool-demo` type, and `fake` types scripted to ask for tools): `--tool` executing a
client tool, exit 9 for an action this invocation cannot give, `runs approve` (and --deny)
of a server tool that needs approval, `runs steps`, and their JSON shapes."""

from __future__ import annotations

import json

import pytest

from tests.clients.conftest import Live

# Prints its standard input (the call's arguments), then a newline the CLI strips.
ECHO_ARGS = "cat; echo"
LOOKUP_ARGS = {"query": "weather in Paris"}  # what tool-demo's script asks `lookup`


@pytest.fixture
def project(live: Live) -> dict:
    return live.project()


def _spawn(ctl, project: dict, name: str, agent_type: str) -> dict:
    r = ctl("agents", "spawn", "-p", project["slug"], "--type", agent_type, "--name", name)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def _submit(ctl, project: dict, agent: str, *extra: str):
    return ctl("runs", "submit", "-p", project["slug"], "-a", agent, "-i", "go", *extra)


def _steps(ctl, project: dict, run_id: str) -> list[dict]:
    r = ctl("runs", "steps", "-p", project["slug"], run_id)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def approval_type(live: Live) -> dict:
    """Asks for the demo server's `add`, which needs a person's approval; then echoes."""
    script = [{"tool_calls": [{"name": "demo__add", "arguments": {"a": 2, "b": 3}}]}]
    server = {"name": "demo", "url": live.demo_mcp_url(), "require_approval": ["add"]}
    return live.agent_type(config={"script": script}, mcp_servers=[server])


def test_tool_command_answers_the_client_tool_and_steps_show_the_run(
    ctl, live: Live, project: dict
) -> None:
    _spawn(ctl, project, "demo", "tool-demo")
    r = _submit(ctl, project, "demo", "--wait", "60", "--tool", f"lookup={ECHO_ARGS}")
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    # The command got the call's arguments as JSON on stdin; its stdout, one trailing newline
    # stripped, was the result that the model echoed.
    assert json.loads(run["output"].removeprefix("echo: ")) == LOOKUP_ARGS
    assert (run["status"], run["steps"], run["required_action"]) == ("succeeded", 5, None)
    assert run == live.get(f"/projects/{project['id']}/runs/{run['id']}")

    steps = _steps(ctl, project, run["id"])
    api = live.get(f"/projects/{project['id']}/runs/{run['id']}/steps", params={"limit": 100})
    assert steps == api["data"]
    assert [(s["index"], s["kind"], s["status"]) for s in steps] == [
        (0, "model", "succeeded"),
        (1, "tool", "succeeded"),
        (2, "model", "succeeded"),
        (3, "tool", "succeeded"),
        (4, "model", "succeeded"),
    ]
    word_count, lookup = steps[1], steps[3]
    assert (word_count["name"], word_count["executor"], word_count["output"]) == (
        "demo__word_count",
        "server",
        "4",
    )
    assert (lookup["name"], lookup["executor"], lookup["is_error"]) == ("lookup", "client", False)
    assert (lookup["arguments"], lookup["output"]) == (LOOKUP_ARGS, json.dumps(LOOKUP_ARGS))
    assert lookup["tool_call_id"] == steps[2]["tool_calls"][0]["id"]
    assert steps[4]["text"] == run["output"]

    r = ctl("runs", "steps", "-p", project["slug"], run["id"], "-o", "table")
    assert r.code == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["INDEX", "KIND", "STATUS", "NAME", "MODEL", "TEXT", "OUTPUT"]
    assert [row.split()[:3] for row in rows][1] == ["1", "tool", "succeeded"]


def test_failing_tool_command_gives_an_error_result(ctl, project: dict) -> None:
    _spawn(ctl, project, "demo", "tool-demo")
    r = _submit(ctl, project, "demo", "--tool", "lookup=echo no such place; exit 3")
    assert r.code == 0, r.stderr  # --tool waits; the model was told, and the run went on
    run = json.loads(r.stdout)
    assert (run["status"], run["output"]) == ("succeeded", "echo: no such place")
    lookup = _steps(ctl, project, run["id"])[3]
    assert (lookup["output"], lookup["is_error"]) == ("no such place", True)


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        ("head -c 100001 /dev/zero | tr '\\0' a", "at most 100000 characters"),
        ("printf 'a\\0b'", "should match pattern"),  # Postgres text cannot hold a NUL
        ("head -c 2000000 /dev/zero | tr '\\0' a", "The request body exceeds"),  # 413
    ],
)
def test_an_output_the_server_refuses_becomes_an_error_result(
    ctl, project: dict, command: str, refusal: str
) -> None:
    """Else the CLI would exit 2 with the run left waiting (its agent's turn held) until the
    action expired."""
    _spawn(ctl, project, "demo", "tool-demo")
    r = _submit(ctl, project, "demo", "--tool", f"lookup={command}")
    assert r.code == 0, r.stderr
    assert "the server refused its output" in r.stderr
    run = json.loads(r.stdout)
    lookup = _steps(ctl, project, run["id"])[3]
    assert lookup["is_error"] is True
    assert lookup["output"].startswith("the tool's output was refused by the Agentry server: ")
    assert refusal in lookup["output"]
    assert (run["status"], run["output"]) == ("succeeded", "echo: " + lookup["output"])


def test_an_action_no_tool_covers_exits_9_and_prints_the_run(
    ctl, live: Live, project: dict
) -> None:
    _spawn(ctl, project, "demo", "tool-demo")
    for extra in ((), ("--tool", "other=cat"), ("--tool", "demo__word_count=cat")):
        r = _submit(ctl, project, "demo", "--wait", "60", *extra)
        assert r.code == 9, r.stderr
        run = json.loads(r.stdout)
        assert run == live.get(f"/projects/{project['id']}/runs/{run['id']}")
        assert (run["status"], run["required_action"]["type"]) == (
            "requires_action",
            "submit_tool_outputs",
        )
        [call] = run["required_action"]["tool_calls"]
        assert (call["name"], call["arguments"]) == ("lookup", LOOKUP_ARGS)
        # Nothing was answered: the run waits, its server tool done, the client tool not.
        assert [s["kind"] for s in _steps(ctl, project, run["id"])] == ["model", "tool", "model"]
        assert ctl("runs", "cancel", "-p", project["slug"], run["id"]).code == 0


def test_an_action_partly_covered_exits_9_and_answers_nothing(
    ctl, live: Live, project: dict
) -> None:
    """One model step asks for two client tools; --tool covers only one of them."""
    tool = {"description": "", "input_schema": {"type": "object"}}
    calls = [{"name": "lookup", "arguments": {}}, {"name": "fetch", "arguments": {}}]
    kind = live.agent_type(
        config={"script": [{"tool_calls": calls}]},
        tools=[{"name": "lookup", **tool}, {"name": "fetch", **tool}],
    )
    _spawn(ctl, project, "two", kind["slug"])
    r = _submit(ctl, project, "two", "--tool", "lookup=echo found")
    assert r.code == 9, r.stderr
    run = json.loads(r.stdout)
    assert [c["name"] for c in run["required_action"]["tool_calls"]] == ["lookup", "fetch"]
    assert run["steps"] == 1  # no tool step: neither call was answered
    assert ctl("runs", "cancel", "-p", project["slug"], run["id"]).code == 0

    r = _submit(ctl, project, "two", "--tool", "lookup=echo found", "--tool", "fetch=echo got")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "echo: found\ngot"


def test_an_approval_exits_9_even_with_a_tool_and_approve_runs_the_call(
    ctl, live: Live, project: dict, approval_type: dict
) -> None:
    _spawn(ctl, project, "careful", approval_type["slug"])
    r = _submit(ctl, project, "careful", "--wait", "60", "--tool", "demo__add=echo 99")
    assert r.code == 9, r.stderr
    run = json.loads(r.stdout)
    assert (run["status"], run["required_action"]["type"]) == (
        "requires_action",
        "approve_tool_calls",
    )
    [call] = run["required_action"]["tool_calls"]
    assert (call["name"], call["arguments"]) == ("demo__add", {"a": 2, "b": 3})

    r = ctl("runs", "approve", "-p", project["slug"], run["id"], "--call", call["id"])
    assert r.code == 0, r.stderr
    answered = json.loads(r.stdout)
    assert (answered["id"], answered["status"], answered["required_action"]) == (
        run["id"],
        "queued",
        None,
    )
    r = ctl("runs", "follow", "-p", project["slug"], run["id"])
    assert r.code == 0, r.stderr
    end = json.loads(r.stdout.splitlines()[-1])
    assert (end["event"], end["data"]["output"]) == ("end", "echo: 5")  # the server added

    add = _steps(ctl, project, run["id"])[1]
    assert (add["executor"], add["output"], add["is_error"]) == ("server", "5", False)
    # Who decided: the API key agentryctl used, and its owner.
    key = next(k for k in live.get("/api-keys")["data"] if live.api_key.startswith(k["prefix"]))
    assert add["approval"] == {
        "approved": True,
        "message": None,
        "actor_user_id": live.get("/users/me")["id"],
        "actor_api_key_id": key["id"],
    }

    # The run no longer waits: approving again is a 409 (exit 7).
    r = ctl("runs", "approve", "-p", project["slug"], run["id"], "--call", call["id"])
    assert r.code == 7
    assert "invalid_transition" in r.stderr


def test_deny_every_call_tells_the_model_and_a_wrong_or_missing_call_is_exit_2(
    ctl, live: Live, project: dict
) -> None:
    calls = [{"name": "demo__add", "arguments": {"a": n, "b": n}} for n in (1, 2)]
    server = {"name": "demo", "url": live.demo_mcp_url(), "require_approval": "always"}
    kind = live.agent_type(config={"script": [{"tool_calls": calls}]}, mcp_servers=[server])
    _spawn(ctl, project, "careful", kind["slug"])
    r = _submit(ctl, project, "careful", "--wait", "60")
    assert r.code == 9, r.stderr
    run = json.loads(r.stdout)
    first, second = (call["id"] for call in run["required_action"]["tool_calls"])

    approve = ("runs", "approve", "-p", project["slug"], run["id"])
    for wrong in (("--call", "call_nope"), ("--call", first)):  # not pending; one unanswered
        r = ctl(*approve, *wrong)
        assert r.code == 2
        assert "validation_error" in r.stderr
        assert "field: decisions" in r.stderr
    still = json.loads(ctl("runs", "get", "-p", project["slug"], run["id"]).stdout)
    assert still["status"] == "requires_action"  # nothing was decided

    r = ctl(*approve, "--call", first, "--call", second, "--deny", "--message", "not today")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "queued"
    r = ctl("runs", "follow", "-p", project["slug"], run["id"])
    assert r.code == 0, r.stderr
    output = json.loads(r.stdout.splitlines()[-1])["data"]["output"]
    assert output == "echo: denied: not today\ndenied: not today"
    for add in _steps(ctl, project, run["id"])[1:3]:
        assert (add["output"], add["is_error"]) == ("denied: not today", True)
        assert (add["approval"]["approved"], add["approval"]["message"]) == (False, "not today")


def test_an_action_left_unanswered_expires_follow_exits_1(ctl, live: Live, project: dict) -> None:
    script = [{"tool_calls": [{"name": "demo__add", "arguments": {"a": 2, "b": 3}}]}]
    server = {"name": "demo", "url": live.demo_mcp_url(), "require_approval": "always"}
    kind = live.agent_type(
        config={"script": script}, mcp_servers=[server], action_timeout_seconds=1
    )
    _spawn(ctl, project, "slow-to-decide", kind["slug"])
    run = json.loads(_submit(ctl, project, "slow-to-decide").stdout)  # no wait: no race

    r = ctl("runs", "follow", "-p", project["slug"], run["id"])  # until the reaper ends it
    assert r.code == 1, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    [action] = [e["data"] for e in events if e["event"] == "requires_action"]
    [call] = action["tool_calls"]
    assert (events[-1]["event"], events[-1]["data"]["status"]) == ("end", "failed")
    assert events[-1]["data"]["error"]["code"] == "action_expired"
    r = ctl("runs", "approve", "-p", project["slug"], run["id"], "--call", call["id"])
    assert r.code == 7
    assert "invalid_transition" in r.stderr


def test_steps_lists_every_page(ctl, live: Live, project: dict) -> None:
    """More steps than a page holds (100): one model step asks for 100 server tool calls."""
    calls = [{"name": "demo__word_count", "arguments": {"text": "w " * n}} for n in range(100)]
    server = {"name": "demo", "url": live.demo_mcp_url()}
    kind = live.agent_type(config={"script": [{"tool_calls": calls}]}, mcp_servers=[server])
    _spawn(ctl, project, "busy", kind["slug"])
    r = _submit(ctl, project, "busy", "--wait", "120")
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["steps"] == 102
    steps = _steps(ctl, project, run["id"])
    assert [s["index"] for s in steps] == list(range(102))
    assert [s["output"] for s in steps[1:101]] == [str(n) for n in range(100)]
    path = f"/projects/{project['id']}/runs/{run['id']}/steps"
    pages = [live.get(path, params={"page": p, "limit": 100})["data"] for p in (1, 2)]
    assert steps == pages[0] + pages[1]

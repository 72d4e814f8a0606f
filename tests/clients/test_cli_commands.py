"""agentryctl against a live server: every exit code it can reach there, --output json
shapes, name resolution, global flags anywhere, and the agent lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.clients.conftest import AGENTRYCTL, Live, free_port


@pytest.fixture
def project(live: Live) -> dict:
    return live.project()


def _spawn(ctl, project: dict, name: str, agent_type: str = "echo") -> dict:
    r = ctl("agents", "spawn", "-p", project["slug"], "--type", agent_type, "--name", name)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_lifecycle_spawn_submit_wait_terminate(ctl, project: dict) -> None:
    agent = _spawn(ctl, project, "ci-1")
    assert agent["status"] == "idle"
    assert agent["agent_type_slug"] == "echo"

    r = ctl("runs", "submit", "-p", project["slug"], "-a", "ci-1", "--input", "hi", "--wait", "30")
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    assert (run["status"], run["output"], run["agent_id"]) == ("succeeded", "echo: hi", agent["id"])

    r = ctl("agents", "terminate", "-p", project["slug"], "ci-1")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["success"] is True
    r = ctl("agents", "get", "-p", project["id"], agent["id"])
    assert json.loads(r.stdout)["status"] == "terminated"
    # Terminating again is a 409: exit 7, the API's code and request id on stderr.
    r = ctl("agents", "terminate", "-p", project["slug"], agent["id"])
    assert r.code == 7
    assert r.stdout == ""
    assert "invalid_transition" in r.stderr
    assert "request_id: " in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_follow_prints_one_json_line_per_event_and_submit_follow_prints_deltas(
    ctl, project: dict
) -> None:
    _spawn(ctl, project, "talker")
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "talker", "-i", "a b c", "--follow")
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    assert r.stderr.strip() == "echo: a b c"  # the deltas, as they came

    r = ctl("runs", "follow", "-p", project["slug"], run["id"])
    assert r.code == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(set(e) == {"event", "id", "data"} for e in events)
    assert events[0] == {"event": "status", "id": events[0]["id"], "data": {"status": "queued"}}
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["id"] == run["id"]
    assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "echo: a b c"


def test_json_output_is_exactly_the_api_json(ctl, live: Live, project: dict) -> None:
    agent = _spawn(ctl, project, "shape")
    api = live.get(f"/projects/{project['id']}/agents/{agent['id']}")
    r = ctl("agents", "get", "-p", project["slug"], "shape", "--output", "json")
    assert json.loads(r.stdout) == api

    r = ctl("projects", "get", project["slug"])
    assert json.loads(r.stdout) == live.get(f"/projects/{project['id']}")

    # A list prints the `data` arrays of every page as one array.
    r = ctl("agent-types", "list")
    assert json.loads(r.stdout) == live.get("/agent-types", params={"limit": 100})["data"]

    # A command whose answer has no body prints nothing.
    doomed = live.project()
    r = ctl(
        "projects",
        "delete",
        doomed["slug"],
        env={"AGENTRY_API_KEY": None, "AGENTRY_TOKEN": live.token},
    )
    assert (r.code, r.stdout) == (0, "")


def test_table_output_and_global_flags_anywhere(ctl, live: Live, project: dict) -> None:
    _spawn(ctl, project, "tabled")
    r = ctl("agents", "list", "-p", project["slug"], "-o", "table")
    assert r.code == 0
    header, row = r.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATUS"]
    assert "tabled" in row

    # Flags before and after the command; the environment says nothing.
    env = {"AGENTRY_URL": None, "AGENTRY_API_KEY": None}
    r = ctl(
        "--url",
        live.url,
        "agents",
        "list",
        "-p",
        project["slug"],
        "--api-key",
        live.api_key,
        "--output=json",
        env=env,
    )
    assert r.code == 0, r.stderr
    assert [a["name"] for a in json.loads(r.stdout)] == ["tabled"]


def test_usage_errors_and_validation_exit_2(ctl, project: dict) -> None:
    _spawn(ctl, project, "v")
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "v")  # neither --input nor a file
    assert r.code == 2
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "v", "-i", "x", "--metadata", "[1]")
    assert r.code == 2
    r = ctl("agents", "list", "-p", project["slug"], "--status", "sleepy")
    assert r.code == 2
    assert "validation_error" in r.stderr
    assert "request_id: " in r.stderr


def test_bad_credentials_exit_3_and_missing_scope_exit_3(ctl, live: Live, project: dict) -> None:
    r = ctl("projects", "list", env={"AGENTRY_API_KEY": "agk_not_a_key"})
    assert r.code == 3
    assert "unauthorized" in r.stderr
    reader = live.post("/api-keys", {"name": "reader", "scopes": ["projects:read", "agents:read"]})
    r = ctl(
        "agents", "spawn", "-p", project["id"], "--type", "echo", "--name", "x",
        env={"AGENTRY_API_KEY": reader["key"]},
    )  # fmt: skip
    assert r.code == 3
    assert "forbidden" in r.stderr


def test_not_found_exit_4_with_and_without_request_id(ctl, project: dict) -> None:
    r = ctl("agents", "list", "-p", "no-such-project")
    assert r.code == 4
    assert r.stderr.startswith("error: not_found")
    assert "request_id" not in r.stderr
    r = ctl("runs", "get", "-p", project["slug"], str(uuid.uuid4()))
    assert r.code == 4
    assert "not_found" in r.stderr
    assert "request_id: " in r.stderr
    r = ctl("agents", "get", "-p", project["slug"], "nobody")
    assert r.code == 4
    assert "request_id" not in r.stderr


def test_spent_budget_exit_5(ctl, live: Live) -> None:
    project = live.project(monthly_token_limit=1)
    _spawn(ctl, project, "spender")
    args = ("runs", "submit", "-p", project["slug"], "-a", "spender", "-i", "spend it")
    assert ctl(*args, "--wait", "30").code == 0  # uses more than the 1-token budget
    r = ctl(*args)
    assert r.code == 5
    assert "budget_exceeded" in r.stderr


def test_failed_run_exit_1_and_wait_timeout_exit_6_print_the_run(ctl, live: Live) -> None:
    slug = f"broken-{uuid.uuid4().hex[:6]}"
    live.post(
        "/agent-types",
        {"name": slug, "slug": slug, "provider": "fake", "model": "fake-echo",
         "config": {"fail_permanently": True}},
    )  # fmt: skip
    project = live.project()
    _spawn(ctl, project, "broken", agent_type=slug)
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "broken", "-i", "x", "--wait", "30")
    assert r.code == 1, r.stderr
    assert json.loads(r.stdout)["status"] == "failed"

    # A paused agent's run stays queued: the wait runs out.
    _spawn(ctl, project, "sleeper")
    assert ctl("agents", "pause", "-p", project["slug"], "sleeper").code == 0
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "sleeper", "-i", "x", "--wait", "1")
    assert r.code == 6, r.stderr
    run = json.loads(r.stdout)
    assert run["status"] == "queued"
    r = ctl("runs", "cancel", "-p", project["slug"], run["id"])
    assert r.code == 0
    assert json.loads(r.stdout)["status"] == "cancelled"
    r = ctl("runs", "list", "-p", project["slug"], "--agent", "sleeper")
    assert [x["status"] for x in json.loads(r.stdout)] == ["cancelled"]


def test_interrupted_wait_exits_130_not_1(live: Live) -> None:
    """Ctrl-C must not look like exit 1, "the run failed" (typer exits 130)."""
    project = live.project()
    echo = next(t["id"] for t in live.get("/agent-types")["data"] if t["slug"] == "echo")
    agent = live.post(f"/projects/{project['id']}/agents", {"agent_type_id": echo, "name": "i"})
    live.post(f"/projects/{project['id']}/agents/{agent['id']}/pause", None)
    env = {**os.environ, "AGENTRY_URL": live.url, "AGENTRY_API_KEY": live.api_key}
    args = ["runs", "submit", "-p", project["id"], "-a", agent["id"], "-i", "x", "--wait", "60"]
    proc = subprocess.Popen(
        [AGENTRYCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not live.get(f"/projects/{project['id']}/runs")["data"] and time.monotonic() < deadline:
        time.sleep(0.1)  # submitted: the CLI is waiting on the stream
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130


def test_unreachable_server_exit_8(ctl) -> None:
    r = ctl(
        "projects",
        "list",
        env={"AGENTRY_URL": f"http://127.0.0.1:{free_port()}", "AGENTRY_RETRY_SECONDS": "1"},
    )
    assert r.code == 8
    assert r.stderr.startswith("error: connection_failed")


def test_metrics_and_steps(ctl, live: Live, project: dict) -> None:
    _spawn(ctl, project, "m")
    run = json.loads(
        ctl(
            "runs", "submit", "-p", project["slug"], "-a", "m", "-i", "one two", "--wait", "30"
        ).stdout
    )
    r = ctl("metrics", "-p", project["slug"], "--granularity", "day")
    assert r.code == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics == live.get(f"/projects/{project['id']}/metrics", params={"granularity": "day"})
    assert metrics["totals"]["total_tokens"] == run["usage"]["total_tokens"]
    r = ctl("runs", "steps", "-p", project["slug"], run["id"])
    assert r.code == 0, r.stderr
    steps = live.get(f"/projects/{project['id']}/runs/{run['id']}/steps")["data"]
    assert json.loads(r.stdout) == steps
    assert [(s["kind"], s["text"]) for s in steps] == [("model", "echo: one two")]

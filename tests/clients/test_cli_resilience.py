"""Retries and resumption through a proxy that breaks connections: an idempotent create whose
answer is lost is retried with the same key (same object, nothing more created); a
non-idempotent one is not; 502/503/429 are retried within the budget; --wait resumes a cut
event stream with Last-Event-ID; a lost answer to --tool or `runs approve` is sent again as
the same answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.clients.conftest import Live
from tests.clients.proxy import FORWARD, Action, Proxy, Seen, respond


@pytest.fixture
def proxied(live: Live) -> Iterator:
    proxies: list[Proxy] = []

    def make(decide) -> Proxy:
        proxy = Proxy(urlparse(live.url).port, decide)  # type: ignore[arg-type]
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def first(method: str, fragment: str, action: Action, times: int = 1):
    """Apply `action` to the first `times` requests matching, forward everything else."""
    hits: list[int] = []

    def decide(index: int, seen: Seen) -> Action:
        if seen.method == method and fragment in seen.path and len(hits) < times:
            hits.append(index)
            return action
        return FORWARD

    return decide


def test_spawn_retried_after_a_lost_answer_returns_the_same_agent(ctl, live, proxied) -> None:
    project = live.project()
    proxy = proxied(first("POST", "/agents", Action("drop")))
    r = ctl(
        "agents",
        "spawn",
        "-p",
        project["slug"],
        "--type",
        "echo",
        "--name",
        "once",
        env={"AGENTRY_URL": proxy.url},
    )
    assert r.code == 0, r.stderr
    agent = json.loads(r.stdout)
    posts = proxy.matching("POST", "/agents")
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    listed = live.get(f"/projects/{project['id']}/agents")["data"]
    assert [a["id"] for a in listed] == [agent["id"]]


def test_submit_retried_after_a_lost_answer_creates_one_run(ctl, live, proxied) -> None:
    project = live.project()
    live.post(f"/projects/{project['id']}/agents", {"agent_type_id": _echo(live), "name": "a"})
    proxy = proxied(first("POST", "/runs", Action("drop")))
    args = (
        "runs",
        "submit",
        "-p",
        project["slug"],
        "-a",
        "a",
        "-i",
        "x",
        "--idempotency-key",
        "k-1",
    )
    r = ctl(*args, env={"AGENTRY_URL": proxy.url})
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    assert [h.headers["idempotency-key"] for h in proxy.matching("POST", "/runs")] == ["k-1"] * 2
    assert [x["id"] for x in live.get(f"/projects/{project['id']}/runs")["data"]] == [run["id"]]


def test_non_idempotent_request_is_not_retried(ctl, live, proxied) -> None:
    proxy = proxied(first("POST", "/projects", Action("drop")))
    r = ctl(
        "projects",
        "create",
        "lost-answer",
        env={"AGENTRY_URL": proxy.url, "AGENTRY_API_KEY": None, "AGENTRY_TOKEN": live.token},
    )
    assert r.code == 8
    assert "connection_failed" in r.stderr
    assert len(proxy.matching("POST", "/projects")) == 1
    # And a 5xx to such a request exits 8 at once.
    proxy = proxied(first("POST", "/projects", respond(502)))
    r = ctl(
        "projects",
        "create",
        "bad-gateway",
        env={"AGENTRY_URL": proxy.url, "AGENTRY_API_KEY": None, "AGENTRY_TOKEN": live.token},
    )
    assert r.code == 8
    assert len(proxy.matching("POST", "/projects")) == 1


def test_gets_retry_5xx_and_429_within_the_budget(ctl, live, proxied) -> None:
    proxy = proxied(first("GET", "/projects", respond(503, Retry_After="0"), times=2))
    r = ctl("projects", "list", env={"AGENTRY_URL": proxy.url})
    assert r.code == 0, r.stderr
    assert len(proxy.matching("GET", "/projects")) == 3
    # A Retry-After longer than the budget left: give up at once, exit 8.
    proxy = proxied(first("GET", "/projects", respond(429, Retry_After="30"), times=99))
    r = ctl("projects", "list", env={"AGENTRY_URL": proxy.url})
    assert r.code == 8
    assert "http_429" in r.stderr or "rate_limited" in r.stderr
    assert len(proxy.matching("GET", "/projects")) == 1


def test_wait_resumes_a_cut_event_stream_with_last_event_id(ctl, live, proxied) -> None:
    project = live.project()
    slow = next(t for t in live.get("/agent-types")["data"] if t["slug"] == "slow-echo")
    live.post(f"/projects/{project['id']}/agents", {"agent_type_id": slow["id"], "name": "s"})
    proxy = proxied(first("GET", "/events", Action("cut", events=2)))
    r = ctl(
        "runs", "submit", "-p", project["slug"], "-a", "s", "-i", "one two three",
        "--wait", "30", "--follow", env={"AGENTRY_URL": proxy.url},
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "echo: one two three"
    assert r.stderr.strip() == "echo: one two three"  # every delta once: nothing replayed
    streams = proxy.matching("GET", "/events")
    assert len(streams) >= 2
    assert "last-event-id" not in streams[0].headers
    sent_ids = [
        line[4:] for line in proxy.streamed[0].decode().splitlines() if line.startswith("id: ")
    ]
    assert len(sent_ids) == 2
    assert streams[1].headers["last-event-id"] == sent_ids[-1]


def _echo(live: Live) -> str:
    return next(t["id"] for t in live.get("/agent-types")["data"] if t["slug"] == "echo")


def test_tool_outputs_retried_after_a_lost_answer_answer_once(ctl, live, proxied, tmp_path) -> None:
    """--tool: the command runs once; its answer, lost on the way back, is sent again with the
    same Idempotency-Key, and the server takes it as the same answer (no 409)."""
    project = live.project()
    demo = next(t for t in live.get("/agent-types")["data"] if t["slug"] == "tool-demo")
    live.post(f"/projects/{project['id']}/agents", {"agent_type_id": demo["id"], "name": "d"})
    proxy = proxied(first("POST", "/tool-outputs", Action("drop")))
    ran = tmp_path / "ran"
    r = ctl(
        "runs", "submit", "-p", project["slug"], "-a", "d", "-i", "x",
        "--tool", f"lookup=echo once >> {ran}; echo sunny", env={"AGENTRY_URL": proxy.url},
    )  # fmt: skip
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    assert (run["status"], run["output"]) == ("succeeded", "echo: sunny")
    assert ran.read_text() == "once\n"
    posts = proxy.matching("POST", "/tool-outputs")
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    steps = live.get(f"/projects/{project['id']}/runs/{run['id']}/steps")["data"]
    assert [s["executor"] for s in steps if s["kind"] == "tool"] == ["server", "client"]


def test_approve_retried_after_a_lost_answer_decides_once(ctl, live, proxied) -> None:
    project = live.project()
    script = [{"tool_calls": [{"name": "demo__add", "arguments": {"a": 2, "b": 3}}]}]
    server = {"name": "demo", "url": live.demo_mcp_url(), "require_approval": "always"}
    kind = live.agent_type(config={"script": script}, mcp_servers=[server])
    live.post(f"/projects/{project['id']}/agents", {"agent_type_id": kind["id"], "name": "c"})
    r = ctl("runs", "submit", "-p", project["slug"], "-a", "c", "-i", "x", "--wait", "60")
    assert r.code == 9, r.stderr
    run = json.loads(r.stdout)
    [call] = run["required_action"]["tool_calls"]
    proxy = proxied(first("POST", "/approvals", Action("drop")))
    r = ctl(
        "runs", "approve", "-p", project["slug"], run["id"], "--call", call["id"],
        env={"AGENTRY_URL": proxy.url},
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["id"] == run["id"]
    posts = proxy.matching("POST", "/approvals")
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert ctl("runs", "follow", "-p", project["slug"], run["id"]).code == 0
    steps = live.get(f"/projects/{project['id']}/runs/{run['id']}/steps")["data"]
    assert [(s["name"], s["output"]) for s in steps if s["kind"] == "tool"] == [("demo__add", "5")]

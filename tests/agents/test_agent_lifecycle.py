"""Every (from, to) pair of the lifecycle table, through PATCH and through the action endpoints."""

from __future__ import annotations

import pytest

from backend.agents.models import AgentStatus
from backend.agents.state import TRANSITIONS, is_allowed
from tests.agents.conftest import PATH_FROM_IDLE
from tests.support.writers import status_writers

S = AgentStatus
# The table of API.md, written out independently of state.TRANSITIONS.
ALLOWED = {
    (S.idle, S.working),
    (S.idle, S.paused),
    (S.idle, S.terminated),
    (S.working, S.idle),
    (S.working, S.waiting),
    (S.working, S.paused),
    (S.working, S.terminated),
    (S.waiting, S.idle),
    (S.waiting, S.working),
    (S.waiting, S.paused),
    (S.waiting, S.terminated),
    (S.paused, S.idle),
    (S.paused, S.terminated),
}
# The action endpoints and the statuses they may start from.
ACTIONS = {
    "pause": (S.paused, {S.idle, S.working, S.waiting}),
    "resume": (S.idle, {S.paused}),
    "terminate": (S.terminated, {S.idle, S.working, S.waiting, S.paused}),
}


def test_state_table_is_the_api_table():
    assert {(f, t) for f, targets in TRANSITIONS.items() for t in targets} == ALLOWED
    assert all(is_allowed(f, t) == ((f, t) in ALLOWED) for f in S for t in S)


async def _check(agents, agent, response, frm, to, allowed):
    setup = [(a.value, b.value) for a, b in _pairs(frm)]
    label = f"{frm.value} -> {to.value}"
    if allowed:
        assert response.status_code == 200, (label, response.text)
        assert response.json()["status"] == to.value, label
        assert await agents.history(agent.id) == [*setup, (frm.value, to.value)], label
    else:
        assert response.status_code == 409, (label, response.text)
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_transition", "status"), label
        assert await agents.status(agent.id) == frm.value, label
        assert await agents.history(agent.id) == setup, label


def _pairs(status):
    steps = [S.idle, *PATH_FROM_IDLE[status]]
    return list(zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize("frm", list(S), ids=lambda s: f"from_{s.value}")
async def test_patch_status_obeys_the_table(client, auth, agents, frm):
    owner = await auth.user()
    project = await auth.project(owner)
    for to in S:
        agent = await agents.agent(project, frm)
        r = await client.patch(
            f"/api/v1/projects/{project.id}/agents/{agent.id}",
            json={"status": to.value},
            headers=owner.headers,
        )
        await _check(agents, agent, r, frm, to, (frm, to) in ALLOWED)


@pytest.mark.parametrize("action", list(ACTIONS))
async def test_action_endpoints_obey_the_table(client, auth, agents, action):
    owner = await auth.user()
    project = await auth.project(owner)
    to, sources = ACTIONS[action]
    for frm in S:
        agent = await agents.agent(project, frm, session_id="sess", current_task="task")
        url = f"/api/v1/projects/{project.id}/agents/{agent.id}"
        if action == "terminate":
            r = await client.delete(url, headers=owner.headers)
        else:
            r = await client.post(f"{url}/{action}", headers=owner.headers)
        allowed = frm in sources
        assert allowed == ((frm, to) in ALLOWED and (action != "resume" or frm == S.paused))
        if action == "terminate" and allowed:
            assert r.status_code == 200, r.text
            assert r.json() == {"success": True, "message": f"Agent '{agent.name}' terminated"}
            r = await client.get(url, headers=owner.headers)
            body = r.json()
            assert body["terminated_at"]
            assert body["session_id"] is None
            assert body["current_task"] is None
        await _check(agents, agent, r, frm, to, allowed)


def test_nothing_else_writes_agent_status() -> None:
    """Only backend/agents/state.py writes agents.status; every other file calls or embeds it."""
    assert set(status_writers("agents", "Agent")) <= {"agents/state.py"}

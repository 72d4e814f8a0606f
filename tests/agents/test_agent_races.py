"""Concurrent requests racing one transition: exactly one winner, and history to match."""

from __future__ import annotations

import asyncio
import random

import pytest

from backend.agents.models import AgentStatus
from backend.agents.state import TRANSITIONS
from tests.agents.conftest import PATH_FROM_IDLE

S = AgentStatus
RACERS = 20


async def _race(client, headers, requests):
    responses = await asyncio.gather(
        *(client.request(m, url, headers=headers, json=body) for m, url, body in requests)
    )
    codes = sorted(r.status_code for r in responses)
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "invalid_transition"
    return codes


async def _assert_history(agents, agent_id, frm, to, winners):
    history = await agents.history(agent_id)
    final = await agents.status(agent_id)
    assert len(history) == len(PATH_FROM_IDLE[frm]) + winners
    assert final == (to if winners else frm).value
    assert (history[-1][1] if history else S.idle.value) == final


@pytest.mark.parametrize("frm", list(S), ids=lambda s: f"from_{s.value}")
async def test_patch_races_have_one_winner(fast_client, auth, agents, frm):
    owner = await auth.user()
    project = await auth.project(owner)
    # From terminated nothing is allowed: twenty losers.
    targets = sorted(TRANSITIONS[frm]) or [S.idle]
    for to in targets:
        agent = await agents.agent(project, frm)
        url = f"/api/v1/projects/{project.id}/agents/{agent.id}"
        codes = await _race(
            fast_client, owner.headers, [("PATCH", url, {"status": to.value})] * RACERS
        )
        winners = 1 if TRANSITIONS[frm] else 0
        assert codes == [200] * winners + [409] * (RACERS - winners), (frm, to, codes)
        await _assert_history(agents, agent.id, frm, to, winners)


@pytest.mark.parametrize(
    ("action", "to", "sources"),
    [
        ("pause", S.paused, [S.idle, S.working, S.waiting]),
        ("resume", S.idle, [S.paused]),
        ("terminate", S.terminated, [S.idle, S.working, S.waiting, S.paused]),
    ],
)
async def test_action_races_have_one_winner(fast_client, auth, agents, action, to, sources):
    owner = await auth.user()
    project = await auth.project(owner)
    for frm in sources:
        agent = await agents.agent(project, frm)
        url = f"/api/v1/projects/{project.id}/agents/{agent.id}"
        request = (
            ("DELETE", url, None) if action == "terminate" else ("POST", f"{url}/{action}", None)
        )
        codes = await _race(fast_client, owner.headers, [request] * RACERS)
        assert codes == [200] + [409] * (RACERS - 1), (action, frm, codes)
        await _assert_history(agents, agent.id, frm, to, 1)


async def test_mixed_concurrent_requests_leave_a_consistent_history(fast_client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent = await agents.agent(project)
    url = f"/api/v1/projects/{project.id}/agents/{agent.id}"
    menu = [
        ("POST", f"{url}/pause", None),
        ("POST", f"{url}/resume", None),
        ("PATCH", url, {"status": "working"}),
        ("PATCH", url, {"status": "waiting"}),
        ("PATCH", url, {"status": "idle"}),
    ]
    requests = [random.Random(i).choice(menu) for i in range(RACERS)] + [("DELETE", url, None)]
    codes = await _race(fast_client, owner.headers, requests)
    history = await agents.history(agent.id)
    # Every success wrote exactly one row, and the rows chain: each starts where the last ended.
    assert len(history) == codes.count(200)
    chain = [S.idle.value] + [to for _, to in history]
    assert [frm for frm, _ in history] == chain[:-1]
    assert all((S(f), S(t)) in {(a, b) for a in S for b in TRANSITIONS[a]} for f, t in history)
    assert chain[-1] == await agents.status(agent.id)

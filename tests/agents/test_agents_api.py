"""Agent instance writes: spawn (idempotent), update, terminate, events, audit, project deletion."""

from __future__ import annotations

import asyncio
import json
import uuid

from sqlalchemy import func, select

from backend.agents.models import Agent, AgentStatus
from backend.audit.models import AuditLog
from tests.agents.conftest import count_statements

S = AgentStatus


def base(project) -> str:
    return f"/api/v1/projects/{project.id}/agents"


async def test_spawn_returns_the_full_agent(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    body = {
        "agent_type_id": str(agent_type.id),
        "name": "  triage  ",
        "project_id": str(project.id),
        "current_task": "sort tickets",
        "short_term_memory": {"seen": [1, 2]},
    }
    r = await client.post(base(project), json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    agent = r.json()
    assert r.headers["location"] == f"/api/v1/projects/{project.id}/agents/{agent['id']}"
    assert agent["status"] == "idle"
    assert agent["name"] == "triage"
    assert agent["project_id"] == str(project.id)
    assert agent["agent_type_id"] == str(agent_type.id)
    assert agent["agent_type_name"] == agent_type.name
    assert agent["agent_type_slug"] == agent_type.slug
    assert (agent["project_name"], agent["project_slug"]) == (project.name, project.slug)
    assert agent["current_task"] == "sort tickets"
    assert agent["short_term_memory"] == {"seen": [1, 2]}
    assert agent["pending_runs"] == 0
    assert agent["cost_incurred"] == 0
    assert isinstance(agent["cost_incurred"], int | float)
    assert agent["tasks_completed"] == 0
    assert agent["tokens_used"] == 0
    assert agent["terminated_at"] is None
    assert agent["session_id"] is None
    r = await client.get(f"{base(project)}/{agent['id']}", headers=owner.headers)
    assert r.status_code == 200
    assert r.json() == agent


async def test_spawn_refusals(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    other = await auth.project(owner)
    active = await agents.agent_type()
    inactive = await agents.agent_type(is_active=False)

    async def spawn(**body):
        # json.dumps escapes a lone surrogate (httpx's own encoder would refuse to send it).
        content = json.dumps({"name": "a", **body})
        headers = {**owner.headers, "Content-Type": "application/json"}
        return await client.post(base(project), content=content, headers=headers)

    r = await spawn(agent_type_id=str(active.id), project_id=str(other.id))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "project_id"
    r = await spawn(agent_type_id=str(inactive.id))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "agent_type_id"
    r = await spawn(agent_type_id=str(uuid.uuid4()))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    # Garbage is a 422, never a 500 (Postgres refuses NUL and lone surrogates).
    garbage = [
        {"name": "a\x00b"},
        {"name": ""},
        {"name": "x" * 201},
        {"current_task": "\ud800"},
        {"short_term_memory": {"k": "\x00"}},
        {"short_term_memory": {"\x00": 1}},
        {"short_term_memory": []},
        {"short_term_memory": {"big": "x" * 70_000}},
        {"status": "working"},
        {"agent_type_id": "not-a-uuid"},
    ]
    for extra in garbage:
        r = await spawn(**{"agent_type_id": str(active.id), **extra})
        assert r.status_code == 422, (extra, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    assert await agents.db.scalar(select(func.count()).select_from(Agent)) == 0


async def test_spawn_idempotency_key_under_concurrency(fast_client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    body = {"agent_type_id": str(agent_type.id), "name": "once"}
    headers = {**owner.headers, "Idempotency-Key": "spawn-1"}
    responses = await asyncio.gather(
        *(fast_client.post(base(project), json=body, headers=headers) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert all(r.json() == responses[0].json() for r in responses)
    assert await agents.db.scalar(select(func.count()).select_from(Agent)) == 1
    r = await fast_client.post(base(project), json={**body, "name": "other"}, headers=headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    # Scoped to the project: the same key in another project creates a new agent.
    second = await auth.project(owner)
    r = await fast_client.post(base(second), json=body, headers=headers)
    assert r.status_code == 201
    assert r.json()["id"] != responses[0].json()["id"]


async def test_patch_fields_and_atomicity_with_status(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent = await agents.agent(project)
    url = f"{base(project)}/{agent.id}"
    body = {
        "name": "renamed",
        "current_task": "t1",
        "short_term_memory": {"a": 1},
        "long_term_memory_ref": "s3://bucket/mem",
        "session_id": "sess-1",
    }
    r = await client.patch(url, json=body, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in body} == body
    assert r.json()["status"] == "idle"
    # Status and fields in one statement: an invalid transition changes nothing.
    r = await client.patch(url, json={"status": "waiting", "name": "nope"}, headers=owner.headers)
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "status"
    r = await client.get(url, headers=owner.headers)
    assert r.json()["name"] == "renamed"
    r = await client.patch(
        url, json={"status": "working", "current_task": "t2"}, headers=owner.headers
    )
    assert (r.json()["status"], r.json()["current_task"]) == ("working", "t2")
    r = await client.patch(url, json={"current_task": None}, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["current_task"] is None
    r = await client.patch(url, json={}, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "working"
    for bad in ({"name": None}, {"status": None}, {"x": 1}):
        r = await client.patch(url, json=bad, headers=owner.headers)
        assert r.status_code == 422, bad
    r = await client.patch(url, json={"short_term_memory": {"k": 1}}, headers=owner.headers)
    assert r.json()["short_term_memory"] == {"k": 1}
    # The schema allows null here: it clears the memory.
    r = await client.patch(url, json={"short_term_memory": None}, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json()["short_term_memory"] == {}
    r = await client.patch(
        f"{base(project)}/{uuid.uuid4()}", json={"name": "x"}, headers=owner.headers
    )
    assert r.status_code == 404


async def test_terminated_agent_is_read_only(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent = await agents.agent(project, S.working, session_id="s", current_task="t")
    url = f"{base(project)}/{agent.id}"
    r = await client.patch(
        url, json={"status": "terminated", "session_id": "keep?"}, headers=owner.headers
    )
    assert r.status_code == 200
    done = r.json()
    assert done["status"] == "terminated"
    assert done["terminated_at"]
    assert done["session_id"] is None
    assert done["current_task"] is None
    r = await client.patch(url, json={"name": "zombie"}, headers=owner.headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert (await client.get(url, headers=owner.headers)).json() == done


async def test_events_history_oldest_first_with_actors(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    key = await auth.api_key(owner, scopes=["agents:read", "agents:write"])
    agent = await agents.agent(project)
    url = f"{base(project)}/{agent.id}"
    assert (await client.post(f"{url}/pause", headers=owner.headers)).status_code == 200
    assert (await client.post(f"{url}/resume", headers=key.headers)).status_code == 200
    assert (await client.delete(url, headers=owner.headers)).status_code == 200
    r = await client.get(f"{url}/events", headers=owner.headers)
    assert r.status_code == 200
    events = r.json()["data"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        ("idle", "paused"),
        ("paused", "idle"),
        ("idle", "terminated"),
    ]
    assert [e["reason"] for e in events] == ["pause", "resume", "terminate"]
    assert all(e["actor_user_id"] == str(owner.user.id) for e in events)
    assert events[0]["actor_api_key_id"] is None
    assert events[1]["actor_api_key_id"]
    assert set(events[0]) == {
        "id",
        "from_status",
        "to_status",
        "actor_user_id",
        "actor_api_key_id",
        "run_id",
        "reason",
        "created_at",
    }
    r = await client.get(f"{url}/events", params={"limit": 2, "page": 2}, headers=owner.headers)
    assert [e["id"] for e in r.json()["data"]] == [events[2]["id"]]
    assert r.json()["pagination"]["total"] == 3
    fresh = await agents.agent(project)
    r = await client.get(f"{base(project)}/{fresh.id}/events", headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["data"] == []
    r = await client.get(f"{base(project)}/{uuid.uuid4()}/events", headers=owner.headers)
    assert r.status_code == 404


async def test_every_write_is_audited(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    r = await client.post(
        base(project),
        json={"agent_type_id": str(agent_type.id), "name": "a"},
        headers=owner.headers,
    )
    agent_id = r.json()["id"]
    url = f"{base(project)}/{agent_id}"
    await client.patch(url, json={"name": "b"}, headers=owner.headers)
    await client.post(f"{url}/pause", headers=owner.headers)
    await client.post(f"{url}/resume", headers=owner.headers)
    await client.delete(url, headers=owner.headers)
    await client.delete(url, headers=owner.headers)  # refused: no entry
    rows = await agents.db.execute(
        select(AuditLog.action, AuditLog.target_id, AuditLog.project_id, AuditLog.actor_user_id)
        .where(AuditLog.action.like("agent.%"))
        .order_by(AuditLog.created_at)
    )
    rows = rows.all()
    assert [a for a, *_ in rows] == [
        "agent.spawn",
        "agent.update",
        "agent.pause",
        "agent.resume",
        "agent.terminate",
    ]
    assert {(t, p, u) for _, t, p, u in rows} == {(agent_id, project.id, owner.user.id)}


async def test_deleting_the_project_terminates_its_agents_in_one_statement(
    app, client, auth, agents
):
    owner = await auth.user()
    project = await auth.project(owner)
    live = [
        await agents.agent(project, status, session_id="s", current_task="t")
        for status in (S.idle, S.working, S.waiting, S.paused)
    ]
    done = await agents.agent(project, S.terminated)
    other = await agents.agent(await auth.project(owner), S.working)
    with count_statements(app) as statements:
        r = await client.delete(f"/api/v1/projects/{project.id}", headers=owner.headers)
    assert r.status_code == 204
    assert sum("UPDATE agents" in s for s in statements) == 1
    for agent in live:
        history = await agents.history(agent.id)
        assert history[-1][1] == "terminated"
        assert await agents.status(agent.id) == "terminated"
    assert len(await agents.history(done.id)) == 1  # already terminated: untouched
    assert await agents.status(other.id) == "working"  # another project: untouched
    rows = (
        await agents.db.execute(
            select(Agent.terminated_at, Agent.session_id, Agent.current_task).where(
                Agent.id.in_([a.id for a in live])
            )
        )
    ).all()
    assert all(t is not None and s is None and c is None for t, s, c in rows)
    terminated = await agents.db.scalars(
        select(AuditLog.target_id).where(AuditLog.action == "agent.terminate")
    )
    assert sorted(terminated) == sorted(str(a.id) for a in live)

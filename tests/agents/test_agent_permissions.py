"""Role matrix and tenant isolation of every agent endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from backend.agents.models import AgentStatus
from backend.projects.models import Role
from tests.agents.conftest import PATH_FROM_IDLE

S = AgentStatus
READ_OK = {"owner", "admin", "member", "viewer", "superuser", "key", "read_key", "project_key"}
WRITE_OK = {"owner", "admin", "member", "superuser", "key", "project_key"}
NOT_FOUND = {"outsider", "other_project_key"}
ACTORS = sorted(READ_OK | NOT_FOUND | {"no_scope_key"})


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # under /projects/{p}/agents; {a} is an agent id
    write: bool
    success: int = 200
    status: AgentStatus = S.idle  # the agent's status before the request
    body: dict | None = None


ENDPOINTS = {
    "spawn": Endpoint("POST", "", True, 201),
    "list": Endpoint("GET", "", False),
    "project_metrics": Endpoint("GET", "/metrics", False),
    "get": Endpoint("GET", "/{a}", False),
    "update": Endpoint("PATCH", "/{a}", True, body={"name": "renamed"}),
    "pause": Endpoint("POST", "/{a}/pause", True),
    "resume": Endpoint("POST", "/{a}/resume", True, status=S.paused),
    "terminate": Endpoint("DELETE", "/{a}", True),
    "agent_metrics": Endpoint("GET", "/{a}/metrics", False),
    "events": Endpoint("GET", "/{a}/events", False),
}


async def _actors(auth, project, other_project, owner):
    return {
        "owner": owner,
        "admin": await auth.member(project, Role.admin),
        "member": await auth.member(project, Role.member),
        "viewer": await auth.member(project, Role.viewer),
        "outsider": await auth.user(),
        "superuser": await auth.user(superuser=True),
        "key": await auth.api_key(owner, scopes=["agents:read", "agents:write"]),
        "read_key": await auth.api_key(owner, scopes=["agents:read"]),
        "no_scope_key": await auth.api_key(owner, scopes=["projects:read", "runs:read"]),
        "project_key": await auth.api_key(owner, project=project),
        "other_project_key": await auth.api_key(owner, project=other_project),
    }


def _expected(endpoint: Endpoint, actor: str) -> int:
    if actor in NOT_FOUND:
        return 404
    allowed = WRITE_OK if endpoint.write else READ_OK
    return endpoint.success if actor in allowed else 403


async def _call(client, endpoint, project_id, agent_id, headers, agent_type_id):
    url = f"/api/v1/projects/{project_id}/agents" + endpoint.path.format(a=agent_id)
    body = endpoint.body
    if endpoint.method == "POST" and endpoint.path == "":
        body = {"agent_type_id": str(agent_type_id), "name": "spawned"}
    return await client.request(endpoint.method, url, json=body, headers=headers)


@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_role_matrix(client, auth, agents, name):
    endpoint = ENDPOINTS[name]
    owner = await auth.user()
    project = await auth.project(owner)
    other_project = await auth.project(owner)
    agent_type = await agents.agent_type()
    actors = await _actors(auth, project, other_project, owner)
    results = {}
    for actor in ACTORS:
        # A fresh agent per caller, so that every allowed write has something to change.
        agent = await agents.agent(project, endpoint.status, agent_type=agent_type)
        r = await _call(
            client, endpoint, project.id, agent.id, actors[actor].headers, agent_type.id
        )
        results[actor] = r.status_code
        if r.status_code >= 400:
            assert await agents.status(agent.id) == endpoint.status.value
    assert results == {actor: _expected(endpoint, actor) for actor in ACTORS}


@pytest.mark.parametrize("name", [n for n, e in ENDPOINTS.items() if "{a}" in e.path])
async def test_agent_of_another_project_is_not_found(client, auth, agents, name):
    endpoint = ENDPOINTS[name]
    owner = await auth.user()
    mine = await auth.project(owner)
    theirs = await auth.project(await auth.user())
    agent = await agents.agent(theirs, endpoint.status)
    superuser = await auth.user(superuser=True)
    for caller in (owner, superuser):  # a member of the path's project; a superuser
        r = await _call(client, endpoint, mine.id, agent.id, caller.headers, None)
        assert r.status_code == 404, (name, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert await agents.status(agent.id) == endpoint.status.value
    assert len(await agents.history(agent.id)) == len(PATH_FROM_IDLE[endpoint.status])

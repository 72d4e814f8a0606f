"""The runs REST API: submit, read, list, cancel, idempotency, wait, budget, role matrix."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from backend.audit.models import AuditLog
from backend.projects.models import Project, Role
from backend.runs.models import Run
from tests.runs.conftest import World
from tests.support.auth import Actor


async def test_submit_answers_202_with_location_and_a_queued_run(world: World) -> None:
    agent = await world.agent()
    response = await world.client.post(
        world.runs_url(agent), json={"input": "hello"}, headers=world.owner.headers
    )
    assert response.status_code == 202
    run = response.json()
    assert response.headers["Location"] == f"/api/v1/projects/{world.project.id}/runs/{run['id']}"
    assert run["status"] == "queued"
    assert run["agent_id"] == str(agent.id)
    assert run["provider"] == "fake"
    assert run["model"] == "fake-echo"
    assert run["usage"]["total_tokens"] == 0
    assert run["output"] is None
    assert response.headers["X-RateLimit-Limit"]
    assert await world.run(run["id"]) == run
    agent_out = (
        await world.client.get(
            f"/api/v1/projects/{world.project.id}/agents/{agent.id}", headers=world.owner.headers
        )
    ).json()
    assert agent_out["pending_runs"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": ""},
        {"input": "x", "timeout_seconds": 0},
        {"input": "x", "timeout_seconds": 3601},
        {"input": "x", "extra": 1},
        {"input": "nul\x00"},
        {"input": "x", "metadata": []},
    ],
)
async def test_invalid_bodies_are_422(world: World, body: dict) -> None:
    agent = await world.agent()
    response = await world.client.post(
        world.runs_url(agent), json=body, headers=world.owner.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


async def test_unknown_or_foreign_agent_is_404(world: World) -> None:
    other_owner = await world.auth.user()
    other_project = await world.auth.project(other_owner)
    foreign = await World(
        world.db, world.client, world.auth, other_owner, other_project, world.sessions
    ).agent()
    response = await world.client.post(
        world.runs_url(foreign), json={"input": "x"}, headers=world.owner.headers
    )
    assert response.status_code == 404


async def test_terminated_agent_is_409(world: World) -> None:
    agent = await world.agent()
    url = f"/api/v1/projects/{world.project.id}/agents/{agent.id}"
    assert (await world.client.delete(url, headers=world.owner.headers)).status_code == 200
    response = await world.client.post(
        world.runs_url(agent), json={"input": "x"}, headers=world.owner.headers
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"


async def test_spent_budget_is_402(world: World) -> None:
    agent = await world.agent()
    await world.db.execute(
        update(Project).where(Project.id == world.project.id).values(monthly_token_limit=0)
    )
    await world.db.commit()
    response = await world.client.post(
        world.runs_url(agent), json={"input": "x"}, headers=world.owner.headers
    )
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    listed = await world.client.get(
        f"/api/v1/projects/{world.project.id}/runs", headers=world.owner.headers
    )
    assert listed.json()["pagination"]["total"] == 0


async def test_idempotent_submit_creates_one_run(world: World) -> None:
    agent = await world.agent()
    headers = {**world.owner.headers, "Idempotency-Key": "abc-1"}
    first = await world.client.post(world.runs_url(agent), json={"input": "x"}, headers=headers)
    again = await world.client.post(world.runs_url(agent), json={"input": "x"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    other = await world.client.post(world.runs_url(agent), json={"input": "y"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"
    listed = await world.client.get(
        f"/api/v1/projects/{world.project.id}/runs", headers=world.owner.headers
    )
    assert listed.json()["pagination"]["total"] == 1


async def test_concurrent_idempotent_submits_create_one_run(world: World) -> None:
    agent = await world.agent()
    headers = {**world.owner.headers, "Idempotency-Key": "race-1"}
    responses = await asyncio.gather(
        *(
            world.client.post(world.runs_url(agent), json={"input": "x"}, headers=headers)
            for _ in range(5)
        )
    )
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    assert all(r.status_code in (202, 409) for r in responses)


async def test_wait_answers_200_with_the_finished_run(world: World, worker) -> None:
    agent = await world.agent()
    response = await world.client.post(
        world.runs_url(agent) + "?wait=10", json={"input": "x y"}, headers=world.owner.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert response.json()["output"] == "echo: x y"
    assert response.headers["Location"].endswith(response.json()["id"])


async def test_wait_answers_202_when_the_run_is_not_done_in_time(world: World, worker) -> None:
    agent = await world.agent(latency_ms=3000)
    response = await world.client.post(
        world.runs_url(agent) + "?wait=0.5", json={"input": "x"}, headers=world.owner.headers
    )
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running")


async def test_wait_over_300_is_422(world: World) -> None:
    agent = await world.agent()
    response = await world.client.post(
        world.runs_url(agent) + "?wait=301", json={"input": "x"}, headers=world.owner.headers
    )
    assert response.status_code == 422


async def test_cancel_a_queued_run_at_once_and_a_finished_one_unchanged(world: World) -> None:
    agent = await world.agent()
    run = await world.submit(agent)  # no worker: it stays queued
    url = world.run_url(run["id"]) + "/cancel"
    cancelled = await world.client.post(url, headers=world.owner.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = await world.client.post(url, headers=world.owner.headers)
    assert again.status_code == 200
    assert again.json() == cancelled.json()
    # API.md: the no-op cancel of a finished run is audited too.
    cancels = (
        await world.db.execute(
            select(AuditLog.action, AuditLog.details)
            .where(AuditLog.project_id == world.project.id, AuditLog.action == "run.cancel")
            .order_by(AuditLog.created_at)
        )
    ).all()
    assert [details for _action, details in cancels] == [
        {"from_status": "queued", "changed": True},
        {"from_status": "cancelled", "changed": False},
    ]


async def test_list_filters_and_paginates_newest_first(world: World) -> None:
    a1, a2 = await world.agent(), await world.agent()
    ids = [(await world.submit(a1, f"r{n}"))["id"] for n in range(3)]
    other = (await world.submit(a2, "other"))["id"]
    await world.client.post(world.run_url(ids[0]) + "/cancel", headers=world.owner.headers)
    base = f"/api/v1/projects/{world.project.id}/runs"

    page = (await world.client.get(f"{base}?limit=2", headers=world.owner.headers)).json()
    assert [r["id"] for r in page["data"]] == [other, ids[2]]
    assert page["pagination"] == {
        "total": 4,
        "page": 1,
        "limit": 2,
        "total_pages": 2,
        "has_next": True,
        "has_prev": False,
    }
    by_agent = (
        await world.client.get(f"{base}?agent_id={a1.id}", headers=world.owner.headers)
    ).json()
    assert [r["id"] for r in by_agent["data"]] == ids[::-1]
    cancelled = (
        await world.client.get(f"{base}?status=cancelled", headers=world.owner.headers)
    ).json()
    assert [r["id"] for r in cancelled["data"]] == [ids[0]]
    bad = await world.client.get(f"{base}?status=bogus", headers=world.owner.headers)
    assert bad.status_code == 422


async def test_a_run_of_another_project_is_404(world: World) -> None:
    agent = await world.agent()
    run = await world.submit(agent)
    other_owner = await world.auth.user()
    other_project = await world.auth.project(other_owner)
    url = f"/api/v1/projects/{other_project.id}/runs/{run['id']}"
    assert (await world.client.get(url, headers=other_owner.headers)).status_code == 404
    cancel = await world.client.post(url + "/cancel", headers=other_owner.headers)
    assert cancel.status_code == 404


# --- role matrix -----------------------------------------------------------------------------

READ, WRITE = "read", "write"


async def _actor(world: World, who: str) -> Actor:
    if who == "owner":
        return world.owner
    if who in ("admin", "member", "viewer"):
        return await world.auth.member(world.project, Role(who))
    if who == "outsider":
        return await world.auth.user()
    if who == "superuser":
        return await world.auth.user(superuser=True)
    if who == "key:runs:read":
        return await world.auth.api_key(world.owner, scopes=["runs:read"])
    if who == "key:runs:write":
        return await world.auth.api_key(world.owner, scopes=["runs:read", "runs:write"])
    if who == "key:agents:write":
        return await world.auth.api_key(world.owner, scopes=["agents:read", "agents:write"])
    if who == "key:other-project":
        other = await world.auth.project(world.owner)
        return await world.auth.api_key(world.owner, project=other)
    raise AssertionError(who)


MATRIX = [
    # who, read status, write status (submit 202 / cancel 200)
    ("owner", 200, 202),
    ("admin", 200, 202),
    ("member", 200, 202),
    ("viewer", 200, 403),
    ("outsider", 404, 404),
    ("superuser", 200, 202),
    ("key:runs:read", 200, 403),
    ("key:runs:write", 200, 202),
    ("key:agents:write", 403, 403),
    ("key:other-project", 404, 404),
]


@pytest.mark.parametrize(("who", "read", "write"), MATRIX)
async def test_role_matrix(world: World, who: str, read: int, write: int) -> None:
    agent = await world.agent()
    run = await world.submit(agent)
    actor = await _actor(world, who)
    base = f"/api/v1/projects/{world.project.id}"
    urls = [f"{base}/runs", f"{base}/runs/{run['id']}"]
    if read != 200:  # a granted stream would follow the (never finishing) run
        urls.append(f"{base}/runs/{run['id']}/events")
    for url in urls:
        assert (await world.client.get(url, headers=actor.headers)).status_code == read, url
    submit = await world.client.post(
        f"{base}/agents/{agent.id}/runs", json={"input": "x"}, headers=actor.headers
    )
    assert submit.status_code == write, submit.text
    cancel = await world.client.post(f"{base}/runs/{run['id']}/cancel", headers=actor.headers)
    assert cancel.status_code == (200 if write == 202 else write)


async def test_no_credentials_is_401(world: World) -> None:
    agent = await world.agent()
    response = await world.client.post(world.runs_url(agent), json={"input": "x"})
    assert response.status_code == 401
    listed = await world.client.get(f"/api/v1/projects/{world.project.id}/runs")
    assert listed.status_code == 401


async def test_deleting_the_project_cancels_its_runs(world: World) -> None:
    agents = [await world.agent(), await world.agent()]
    ids = [(await world.submit(a))["id"] for a in agents]
    response = await world.client.delete(
        f"/api/v1/projects/{world.project.id}", headers=world.owner.headers
    )
    assert response.status_code == 204
    statuses = (
        await world.db.scalars(
            select(Run.status).where(Run.id.in_(ids)).execution_options(populate_existing=True)
        )
    ).all()
    assert statuses == ["cancelled", "cancelled"]

"""Reading agents: list (constant SQL), get (one statement), metrics, per-route limits."""

from __future__ import annotations

from decimal import Decimal

from backend.agents.models import Agent, AgentStatus
from backend.projects.models import Role
from backend.runs.models import Run
from tests.agents.conftest import count_statements

S = AgentStatus


def base(project) -> str:
    return f"/api/v1/projects/{project.id}/agents"


async def _add_runs(db, agent, statuses):
    for status in statuses:
        db.add(
            Run(
                project_id=agent.project_id,
                agent_id=agent.id,
                status=status,
                input="hi",
                provider="fake",
                model="fake-echo",
            )
        )
    await db.commit()


async def test_list_filters_paginates_newest_first_and_counts_pending_runs(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    foreign = await auth.project(owner)
    type_a, type_b = await agents.agent_type(), await agents.agent_type()
    made = []
    for i in range(5):
        made.append(await agents.agent(project, agent_type=type_a if i % 2 else type_b))
    await agents.put_in(made[0].id, S.paused)
    await agents.agent(foreign)
    await _add_runs(agents.db, made[4], ["queued", "running", "succeeded", "failed"])
    await _add_runs(agents.db, made[3], ["queued", "cancelled"])

    r = await client.get(base(project), headers=owner.headers)
    assert r.status_code == 200
    page = r.json()
    assert page["pagination"] == {
        "total": 5,
        "page": 1,
        "limit": 20,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
    }
    assert [a["id"] for a in page["data"]] == [str(a.id) for a in reversed(made)]
    assert [a["pending_runs"] for a in page["data"]] == [2, 1, 0, 0, 0]
    r = await client.get(base(project), params={"limit": 2, "page": 2}, headers=owner.headers)
    assert [a["id"] for a in r.json()["data"]] == [str(made[2].id), str(made[1].id)]
    assert r.json()["pagination"]["has_next"]
    assert r.json()["pagination"]["has_prev"]
    r = await client.get(base(project), params={"status": "paused"}, headers=owner.headers)
    assert [a["id"] for a in r.json()["data"]] == [str(made[0].id)]
    r = await client.get(
        base(project), params={"agent_type_id": str(type_a.id)}, headers=owner.headers
    )
    assert {a["id"] for a in r.json()["data"]} == {str(made[1].id), str(made[3].id)}
    r = await client.get(base(project), params={"status": "bogus"}, headers=owner.headers)
    assert r.status_code == 422
    r = await client.get(base(project), params={"page": 9}, headers=owner.headers)
    assert r.json()["data"] == []
    assert r.json()["pagination"]["total"] == 5
    r = await client.get(f"{base(project)}/{made[4].id}", headers=owner.headers)
    assert r.json()["pending_runs"] == 2


async def test_list_costs_the_same_statements_for_1_and_100_agents(app, client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = await agents.agent_type()
    first = await agents.agent(project, agent_type=agent_type)
    await _add_runs(agents.db, first, ["queued"])

    async def list_statements() -> tuple[int, int]:
        with count_statements(app) as statements:
            r = await client.get(base(project), params={"limit": 100}, headers=owner.headers)
        assert r.status_code == 200
        return len(statements), len(r.json()["data"])

    one, listed = await list_statements()
    assert listed == 1
    agents.db.add_all(
        Agent(project_id=project.id, agent_type_id=agent_type.id, name=f"a{i}") for i in range(99)
    )
    await agents.db.commit()
    hundred, listed = await list_statements()
    assert listed == 100
    assert hundred == one


async def test_get_agent_is_one_statement_beyond_authorization(app, client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    agent = await agents.agent(project)
    with count_statements(app) as baseline:  # same auth and project gate, no query of its own
        assert (
            await client.get(f"/api/v1/projects/{project.id}", headers=owner.headers)
        ).is_success
    with count_statements(app) as statements:
        r = await client.get(f"{base(project)}/{agent.id}", headers=owner.headers)
    assert r.status_code == 200
    assert len(statements) - len(baseline) == 1
    assert "agent_types" in statements[-1]
    assert "runs" in statements[-1]


async def test_metrics_of_project_and_agent(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    idle = await agents.agent(
        project, tasks_completed=2, tokens_used=100, cost_incurred=Decimal("0.1234564")
    )
    await agents.agent(project, S.working, tokens_used=5)
    await agents.agent(project, S.waiting)
    await agents.agent(project, S.paused)
    gone = await agents.agent(
        project, tasks_completed=1, tokens_used=50, cost_incurred=Decimal("1.5")
    )
    await agents.put_in(gone.id, S.terminated)
    await agents.agent(await auth.project(owner), tokens_used=1000)  # another tenant

    r = await client.get(f"{base(project)}/metrics", headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "total_instances": 5,
        "active_instances": 2,
        "idle_instances": 1,
        "total_tasks_completed": 3,
        "total_tokens_used": 155,
        "total_cost_incurred": 1.623456,
    }
    r = await client.get(f"{base(project)}/{idle.id}/metrics", headers=owner.headers)
    assert r.json() == {
        "total_instances": 1,
        "active_instances": 0,
        "idle_instances": 1,
        "total_tasks_completed": 2,
        "total_tokens_used": 100,
        "total_cost_incurred": 0.123456,
    }
    await agents.put_in(idle.id, S.working)
    r = await client.get(f"{base(project)}/{idle.id}/metrics", headers=owner.headers)
    assert (r.json()["active_instances"], r.json()["idle_instances"]) == (1, 0)
    r = await client.get(f"{base(await auth.project(owner))}/metrics", headers=owner.headers)
    assert r.json()["total_instances"] == 0
    assert r.json()["total_cost_incurred"] == 0


async def test_per_route_limit_is_per_caller(client, auth, agents):
    owner = await auth.user()
    project = await auth.project(owner)
    member = await auth.member(project, Role.member)
    made = [await agents.agent(project) for _ in range(11)]
    codes = [
        (await client.delete(f"{base(project)}/{a.id}", headers=owner.headers)).status_code
        for a in made
    ]
    assert codes == [200] * 10 + [429]
    r = await client.delete(f"{base(project)}/{made[10].id}", headers=owner.headers)
    assert r.status_code == 429
    assert r.headers["retry-after"]
    assert r.json()["error"]["code"] == "rate_limited"
    # Another caller has its own budget, and other routes are counted apart.
    r = await client.delete(f"{base(project)}/{made[10].id}", headers=member.headers)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "10"
    r = await client.get(base(project), headers=owner.headers)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "60"

"""Required actions through the API (API.md "Tools, steps and required actions"): the run
object while waiting, POST …/tool-outputs and …/approvals (steps written, events, job, audit,
idempotency, every wrong answer refused with nothing changed), and the steps listing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from agentry_client.aio import AsyncClient
from sqlalchemy import func, select

from backend.audit.models import AuditLog
from backend.auth.models import ApiKey
from backend.projects.models import Role
from backend.runs.models import ProviderCall, RunStep
from backend.runs.streams import events_key
from tests.agents.conftest import count_statements
from tests.runs.conftest import World
from tests.runs.parking import INPUT_TOKENS, OUTPUT_TOKENS, Parker

OUTPUT = {"tool_outputs": [{"tool_call_id": "call_0_0", "output": "gamma is 3"}]}


def outputs_url(world: World, run_id: str) -> str:
    return world.run_url(run_id) + "/tool-outputs"


def approvals_url(world: World, run_id: str) -> str:
    return world.run_url(run_id) + "/approvals"


async def post(world: World, url: str, body: Any, headers: dict[str, str] | None = None):
    return await world.client.post(url, json=body, headers=headers or world.owner.headers)


async def queued_jobs(app) -> set[str]:
    names = await app.state.redis.zrange(app.state.settings.QUEUE_NAME, 0, -1)
    return {n.decode() if isinstance(n, bytes) else n for n in names}


async def stream(app, run_id: str) -> list[tuple[str, str]]:
    entries = await app.state.redis.xrange(events_key(run_id))
    return [(f[b"event"].decode(), f[b"data"].decode()) for _, f in entries]


async def step_rows(world: World, run_id: str) -> list[RunStep]:
    query = select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.index)
    return list(await world.db.scalars(query.execution_options(populate_existing=True)))


async def audit_rows(world: World, action: str) -> list[AuditLog]:
    query = select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.created_at)
    return list(await world.db.scalars(query))


async def test_a_waiting_run_shows_its_required_action_and_steps(
    world: World, parker: Parker
) -> None:
    agent = await world.agent()
    run = await parker.park(agent)

    assert run["status"] == "requires_action"
    assert run["steps"] == 1
    assert run["usage"]["total_tokens"] == INPUT_TOKENS + OUTPUT_TOKENS  # its model step's
    action = run["required_action"]
    assert action["type"] == "submit_tool_outputs"
    assert action["tool_calls"] == [
        {"id": "call_0_0", "name": "lookup", "arguments": {"q": "gamma"}}
    ]
    assert action["expires_at"].endswith("Z") or "+00:00" in action["expires_at"]
    listed = await world.client.get(
        f"/api/v1/projects/{world.project.id}/runs", headers=world.owner.headers
    )
    assert listed.json()["data"][0]["required_action"] == action
    assert (await world.agent_row(agent)).status == "waiting"


async def test_tool_outputs_queue_the_run_with_its_steps_events_job_and_audit(
    world: World, parker: Parker, app
) -> None:
    agent = await world.agent()
    calls = [{"name": "lookup", "arguments": {"q": "a"}}, {"name": "fetch", "arguments": {}}]
    run = await parker.park(agent, calls=calls)
    body = {
        "tool_outputs": [
            {"tool_call_id": "call_0_1", "output": "fetch failed", "is_error": True},
            {"tool_call_id": "call_0_0", "output": "a is 1"},
        ]
    }

    r = await post(world, outputs_url(world, run["id"]), body)

    assert r.status_code == 200, r.text
    answered = r.json()
    assert (answered["status"], answered["required_action"], answered["steps"]) == (
        "queued",
        None,
        3,
    )
    assert answered == await world.run(run["id"])
    rows = await step_rows(world, run["id"])
    tools = [
        (s.index, s.kind, s.status, s.executor, s.tool_call_id, s.name, s.output, s.is_error)
        for s in rows[1:]
    ]
    # In the order of required_action.tool_calls, whatever the order of the answers.
    assert tools == [
        (1, "tool", "succeeded", "client", "call_0_0", "lookup", "a is 1", False),
        (2, "tool", "failed", "client", "call_0_1", "fetch", "fetch failed", True),
    ]
    assert rows[1].arguments == {"q": "a"}
    assert all(s.attempt == 1 and s.approval is None and s.finished_at for s in rows[1:])
    assert (await world.agent_row(agent)).status == "waiting"  # the claim makes it working
    assert f"run:{run['id']}:1" in await queued_jobs(app)
    events = await stream(app, run["id"])
    assert [name for name, _ in events[-3:]] == ["tool_result", "tool_result", "status"]
    assert '"tool_call_id": "call_0_0", "output": "a is 1", "is_error": false' in events[-3][1]
    assert events[-1][1] == '{"status": "queued"}'
    [entry] = await audit_rows(world, "run.tool_outputs")
    assert entry.actor_user_id == world.owner.user.id
    assert entry.target_id == run["id"]
    assert entry.details["tool_outputs"] == [
        {"tool_call_id": "call_0_0", "name": "lookup", "is_error": False},
        {"tool_call_id": "call_0_1", "name": "fetch", "is_error": True},
    ]


async def test_approvals_write_running_and_denied_steps_and_record_who_decided(
    world: World, parker: Parker, app
) -> None:
    agent = await world.agent()
    calls = [
        {"name": "demo__add", "arguments": {"a": 1, "b": 2}},
        {"name": "demo__wipe", "arguments": {}},
        {"name": "demo__drop", "arguments": {}},
    ]
    run = await parker.park(agent, kind="approve_tool_calls", calls=calls)
    key = await world.auth.api_key(world.owner, scopes=["runs:read", "runs:write"])
    body = {
        "decisions": [
            {"tool_call_id": "call_0_0", "approve": True},
            {"tool_call_id": "call_0_1", "approve": False, "message": "not on a Friday"},
            {"tool_call_id": "call_0_2", "approve": False},
        ]
    }

    r = await post(world, approvals_url(world, run["id"]), body, key.headers)

    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["steps"]) == ("queued", 4)
    rows = await step_rows(world, run["id"])
    approved, friday, plain = rows[1:]
    assert (approved.status, approved.executor, approved.output, approved.is_error) == (
        "running",
        "server",
        None,
        None,
    )
    assert approved.finished_at is None
    assert approved.started_at is not None
    assert (friday.status, friday.output, friday.is_error) == (
        "failed",
        "denied: not on a Friday",
        True,
    )
    assert plain.output == "denied: denied"
    key_id = str(await world.db.scalar(select(ApiKey.id)))
    user_id = str(world.owner.user.id)
    assert approved.approval == {
        "approved": True,
        "message": None,
        "actor_user_id": user_id,
        "actor_api_key_id": key_id,
    }
    assert friday.approval["approved"] is False
    assert friday.approval["message"] == "not on a Friday"
    # Results are published for the denials only: the approved call's comes from the worker.
    events = [name for name, _ in await stream(app, run["id"])]
    assert events[-3:] == ["tool_result", "tool_result", "status"]
    [entry] = await audit_rows(world, "run.approval")
    assert (str(entry.actor_user_id), str(entry.actor_api_key_id)) == (user_id, key_id)
    assert entry.details["decisions"][1] == {
        "tool_call_id": "call_0_1",
        "name": "demo__wipe",
        "approve": False,
        "message": "not on a Friday",
    }


@pytest.mark.parametrize(
    ("answers", "problem"),
    [
        ([{"tool_call_id": "call_9_9", "output": "x"}], "not a pending tool call"),
        ([], "at least 1"),  # schema: an empty answer
        (
            [
                {"tool_call_id": "call_0_0", "output": "x"},
                {"tool_call_id": "call_0_0", "output": "y"},
            ],
            "answered twice",
        ),
        (
            [
                {"tool_call_id": "call_0_0", "output": "x"},
                {"tool_call_id": "call_0_2", "output": "z"},
            ],
            "not a pending tool call",
        ),
        ([{"tool_call_id": "call_0_0", "output": "x"}], "no answer for pending tool calls"),
    ],
)
async def test_wrong_tool_outputs_are_422_and_change_nothing(
    world: World, parker: Parker, app, answers, problem
) -> None:
    agent = await world.agent()
    calls = [{"name": "lookup", "arguments": {}}, {"name": "fetch", "arguments": {}}]
    run = await parker.park(agent, calls=calls)
    before = await stream(app, run["id"])

    r = await post(world, outputs_url(world, run["id"]), {"tool_outputs": answers})

    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith("tool_outputs")
    assert problem in r.json()["error"]["message"]
    await _unchanged(world, app, run, before)


async def _unchanged(world: World, app, run: dict[str, Any], events: list) -> None:
    assert await world.run(run["id"]) == run
    assert len(await step_rows(world, run["id"])) == run["steps"]
    assert await stream(app, run["id"]) == events
    assert not await audit_rows(world, "run.tool_outputs")
    assert not await audit_rows(world, "run.approval")


async def test_wrong_decisions_are_422_naming_decisions(world: World, parker: Parker, app) -> None:
    agent = await world.agent()
    run = await parker.park(agent, kind="approve_tool_calls")
    before = await stream(app, run["id"])
    body = {"decisions": [{"tool_call_id": "call_1_0", "approve": True}]}

    r = await post(world, approvals_url(world, run["id"]), body)

    assert r.status_code == 422
    assert r.json()["error"]["field"] == "decisions"
    await _unchanged(world, app, run, before)


async def test_the_wrong_endpoint_for_the_action_is_409(world: World, parker: Parker, app) -> None:
    agent = await world.agent()
    approval = await parker.park(agent, kind="approve_tool_calls")
    before = await stream(app, approval["id"])

    r = await post(world, outputs_url(world, approval["id"]), OUTPUT)
    assert r.status_code == 409
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "invalid_transition",
        "status",
    )
    assert "approve_tool_calls" in r.json()["error"]["message"]
    await _unchanged(world, app, approval, before)

    other = await world.agent()
    outputs = await parker.park(other)
    decisions = {"decisions": [{"tool_call_id": "call_0_0", "approve": True}]}
    r = await post(world, approvals_url(world, outputs["id"]), decisions)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_transition"


async def test_answering_a_run_that_is_not_waiting_is_409(world: World, parker: Parker) -> None:
    agent = await world.agent()
    queued = await world.submit(agent)  # no worker: it stays queued
    r = await post(world, outputs_url(world, queued["id"]), OUTPUT)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_transition"
    assert await world.run(queued["id"]) == queued

    other = await world.agent()
    run = await parker.park(other)
    assert (await post(world, outputs_url(world, run["id"]), OUTPUT)).status_code == 200
    again = await post(world, outputs_url(world, run["id"]), OUTPUT)  # answered twice
    assert again.status_code == 409
    assert len(await step_rows(world, run["id"])) == 2
    assert len(await audit_rows(world, "run.tool_outputs")) == 1


async def test_an_answer_after_expires_at_is_409_even_before_the_reaper(
    world: World, parker: Parker, app
) -> None:
    agent = await world.agent()
    run = await parker.park(agent, expires_in=-1)
    before = await stream(app, run["id"])

    r = await post(world, outputs_url(world, run["id"]), OUTPUT)

    assert r.status_code == 409
    assert "expired" in r.json()["error"]["message"]
    await _unchanged(world, app, run, before)


async def test_idempotency_key_replays_the_answer(world: World, parker: Parker, app) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    headers = {**world.owner.headers, "Idempotency-Key": "answer-1"}

    first = await post(world, outputs_url(world, run["id"]), OUTPUT, headers)
    second = await post(world, outputs_url(world, run["id"]), OUTPUT, headers)
    other = {"tool_outputs": [{"tool_call_id": "call_0_0", "output": "different"}]}
    reused = await post(world, outputs_url(world, run["id"]), other, headers)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "conflict"
    assert len(await step_rows(world, run["id"])) == 2
    assert len(await audit_rows(world, "run.tool_outputs")) == 1
    events = [name for name, _ in await stream(app, run["id"])]
    assert events.count("tool_result") == 1


@pytest.mark.parametrize(
    "output",
    [
        {"tool_call_id": "call_0_0", "output": "a\x00b"},
        {"tool_call_id": "call_0_0", "output": "x" * 100_001},
        {"tool_call_id": "call_0_0", "output": "x", "is_error": "yes"},
        {"tool_call_id": "", "output": "x"},
        {"tool_call_id": "call_0_0"},
    ],
)
async def test_outputs_are_bounded_and_storable(world: World, parker: Parker, output) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    r = await post(world, outputs_url(world, run["id"]), {"tool_outputs": [output]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith("tool_outputs.0")
    assert (await world.run(run["id"]))["status"] == "requires_action"


async def test_a_long_output_within_the_bound_is_kept_whole(world: World, parker: Parker) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    body = {"tool_outputs": [{"tool_call_id": "call_0_0", "output": "é" * 100_000}]}
    assert (await post(world, outputs_url(world, run["id"]), body)).status_code == 200
    assert (await step_rows(world, run["id"]))[1].output == "é" * 100_000


@pytest.mark.parametrize(("role", "status"), [(Role.viewer, 403), (Role.member, 200)])
async def test_answering_needs_a_member(
    world: World, parker: Parker, role: Role, status: int
) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    actor = await world.auth.member(world.project, role)
    assert (
        await post(world, outputs_url(world, run["id"]), OUTPUT, actor.headers)
    ).status_code == status
    # Everyone who may read runs reads the steps.
    steps = await world.client.get(world.run_url(run["id"]) + "/steps", headers=actor.headers)
    assert steps.status_code == 200


async def test_keys_need_runs_write_and_outsiders_see_nothing(world: World, parker: Parker) -> None:
    agent = await world.agent()
    run = await parker.park(agent)
    reader = await world.auth.api_key(world.owner, scopes=["runs:read"])
    assert (
        await post(world, outputs_url(world, run["id"]), OUTPUT, reader.headers)
    ).status_code == 403
    outsider = await world.auth.user()
    r = await post(world, outputs_url(world, run["id"]), OUTPUT, outsider.headers)
    assert r.status_code == 404
    r = await world.client.get(world.run_url(run["id"]) + "/steps", headers=outsider.headers)
    assert r.status_code == 404
    # A run of another project, through this project's path: not found.
    other_project = await world.auth.project(world.owner)
    url = f"/api/v1/projects/{other_project.id}/runs/{run['id']}/tool-outputs"
    assert (await post(world, url, OUTPUT)).status_code == 404


async def test_steps_are_listed_oldest_first_with_model_usage_from_provider_calls(
    world: World, parker: Parker, app
) -> None:
    agent = await world.agent()
    run = await parker.park(agent, calls=[{"name": "lookup", "arguments": {}}] * 3)
    # The parked step's call (attempt 1), and a retried attempt's call of that step with a
    # fallback model whose price is unknown: a step's usage is every attempt's.
    world.db.add(
        ProviderCall(
            run_id=run["id"],
            project_id=world.project.id,
            agent_id=agent.id,
            attempt=2,
            step=0,
            provider="fake",
            model="fake-2",
            succeeded=True,
            input_tokens=7,
            output_tokens=1,
            cost_usd=None,
            price_source="test",
        )
    )
    await world.db.commit()
    parked_cost = await world.db.scalar(
        select(ProviderCall.cost_usd).where(
            ProviderCall.run_id == run["id"], ProviderCall.attempt == 1
        )
    )
    answers = [{"tool_call_id": f"call_0_{i}", "output": str(i)} for i in range(3)]
    assert (await post(world, outputs_url(world, run["id"]), {"tool_outputs": answers})).is_success

    url = world.run_url(run["id"]) + "/steps"
    with count_statements(app) as statements:
        page = (
            await world.client.get(url, params={"limit": 3}, headers=world.owner.headers)
        ).json()
    with count_statements(app) as more:
        last = await world.client.get(
            url, params={"limit": 3, "page": 2}, headers=world.owner.headers
        )

    assert page["pagination"] == {
        "total": 4,
        "page": 1,
        "limit": 3,
        "total_pages": 2,
        "has_next": True,
        "has_prev": False,
    }
    model, *tools = page["data"]
    assert [s["index"] for s in page["data"]] == [0, 1, 2]
    assert (model["kind"], model["status"], model["provider"], model["model"]) == (
        "model",
        "succeeded",
        "fake",
        "fake-echo",
    )
    assert [c["id"] for c in model["tool_calls"]] == ["call_0_0", "call_0_1", "call_0_2"]
    assert model["usage"] == {
        "input_tokens": INPUT_TOKENS + 7,
        "output_tokens": OUTPUT_TOKENS + 1,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS + 8,
        "cost_usd": float(parked_cost or 0),
        "cost_unknown": True,
    }
    assert all(s["usage"] is None and s["kind"] == "tool" for s in tools)
    assert (tools[0]["output"], tools[0]["executor"]) == ("0", "client")
    assert set(model) == set(tools[0])  # every field on every step, null where not its kind
    assert [s["index"] for s in last.json()["data"]] == [3]
    # The same statements whatever the page: no query per step.
    assert len(statements) == len(more)


async def test_steps_of_an_unknown_run_are_404(world: World) -> None:
    r = await world.client.get(
        world.run_url("00000000-0000-0000-0000-000000000000") + "/steps",
        headers=world.owner.headers,
    )
    assert r.status_code == 404


async def test_steps_of_a_run_without_any_are_an_empty_page(world: World) -> None:
    agent = await world.agent()
    run = await world.submit(agent)
    r = await world.client.get(world.run_url(run["id"]) + "/steps", headers=world.owner.headers)
    assert (r.json()["data"], r.json()["pagination"]["total"]) == ([], 0)
    assert (await world.run(run["id"]))["steps"] == 0
    assert await world.db.scalar(select(func.count()).select_from(RunStep)) == 0


async def test_the_python_client_speaks_these_endpoints(world: World, parker: Parker, app) -> None:
    agent = await world.agent()
    outputs = await parker.park(agent)
    approvals = await parker.park(await world.agent(), kind="approve_tool_calls")
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    project = str(world.project.id)

    async with AsyncClient(
        "http://test", token=token, transport=httpx.ASGITransport(app=app)
    ) as client:
        answered = await client.runs.submit_tool_outputs(
            project, outputs["id"], [{"tool_call_id": "call_0_0", "output": "3"}]
        )
        decided = await client.runs.approve(
            project, approvals["id"], [{"tool_call_id": "call_0_0", "approve": True}]
        )
        steps = [step async for step in client.runs.steps(project, outputs["id"])]

    assert (answered.status, answered.steps, answered.required_action) == ("queued", 2, None)
    assert decided.status == "queued"
    assert [(s.index, s.kind, s.output) for s in steps] == [(0, "model", None), (1, "tool", "3")]
    assert steps[0].usage["total_tokens"] == INPUT_TOKENS + OUTPUT_TOKENS

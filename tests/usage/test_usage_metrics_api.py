"""GET /projects/{id}/metrics and GET /admin/metrics over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update

from backend.core.db import utcnow
from backend.projects.models import Project, Role
from backend.runs.metrics import WORKER_KEY_PREFIX
from backend.runs.models import Run, RunStatus
from backend.usage.tokens import Usage
from tests.usage.conftest import OVERRIDE, World, finish, record_call

DAY1 = datetime(2026, 3, 1, tzinfo=UTC)


async def one_run(world: World, agent, at: datetime, tokens: int, status=RunStatus.succeeded):
    run = await world.run(agent, provider="fake", model="fake-1")
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="fake",
        model="fake-1",
        usage=Usage(input_tokens=tokens, output_tokens=tokens),
        succeeded=True,
        pricing_override=OVERRIDE,
        at=at,
    )
    await finish(world.db, run, status, at=at, started_at=at - timedelta(seconds=2))
    await world.db.commit()
    return run


def url(world: World, **query) -> str:
    return f"/api/v1/projects/{world.project.id}/metrics"


@pytest.fixture
async def dataset(world: World) -> World:
    agent = await world.agent("alpha")
    for minute_offset, tokens in ((10 * 60 + 15, 100), (10 * 60 + 45, 200), (11 * 60 + 5, 300)):
        await one_run(world, agent, DAY1 + timedelta(minutes=minute_offset), tokens)
    await one_run(world, agent, DAY1 + timedelta(days=1, hours=9), 400, RunStatus.failed)
    return world


async def test_hour_and_day_series_bucket_in_utc(client, dataset: World) -> None:
    headers = dataset.owner.headers
    hourly = await client.get(url(dataset), params={"granularity": "hour"}, headers=headers)
    assert hourly.status_code == 200, hourly.text
    body = hourly.json()
    assert [(p["bucket"], p["runs"], p["total_tokens"]) for p in body["series"]] == [
        ("2026-03-01T10:00:00Z", 2, 600),
        ("2026-03-01T11:00:00Z", 1, 600),
        ("2026-03-02T09:00:00Z", 1, 800),
    ]
    daily = (await client.get(url(dataset), params={"granularity": "day"}, headers=headers)).json()
    assert [(p["bucket"], p["runs"]) for p in daily["series"]] == [
        ("2026-03-01T00:00:00Z", 3),
        ("2026-03-02T00:00:00Z", 1),
    ]
    totals = daily["totals"]
    assert (totals["runs"], totals["succeeded"], totals["failed"]) == (4, 3, 1)
    assert totals["total_tokens"] == 2000
    # 1,000 input at $2 + 1,000 output at $8 per MTok = $0.01, as a JSON number.
    assert totals["cost_usd"] == 0.01
    assert daily["window"] == {"from": None, "to": None, "granularity": "day"}
    assert daily["budget"] is None
    [agent] = daily["by_agent"]
    assert (agent["name"], agent["runs"], agent["total_tokens"]) == ("alpha", 4, 2000)
    [model] = daily["by_model"]
    assert (model["provider"], model["model"], model["input_tokens"]) == ("fake", "fake-1", 1000)


async def test_from_to_select_hour_buckets_starting_in_the_window(client, dataset: World) -> None:
    params = {
        "from": "2026-03-01T11:00:00Z",
        "to": "2026-03-02T00:00:00+00:00",
        "granularity": "hour",
    }
    body = (await client.get(url(dataset), params=params, headers=dataset.owner.headers)).json()
    assert body["totals"]["runs"] == 1
    assert body["totals"]["total_tokens"] == 600
    assert [p["bucket"] for p in body["series"]] == ["2026-03-01T11:00:00Z"]
    only_from = {"from": "2026-03-01T10:30:00Z"}  # the 10:00 bucket starts before: excluded
    body = (await client.get(url(dataset), params=only_from, headers=dataset.owner.headers)).json()
    assert body["totals"]["runs"] == 2
    only_to = {"to": "2026-03-01T11:00:00Z"}
    body = (await client.get(url(dataset), params=only_to, headers=dataset.owner.headers)).json()
    assert body["totals"]["runs"] == 2
    empty = {"from": "2030-01-01T00:00:00Z"}
    body = (await client.get(url(dataset), params=empty, headers=dataset.owner.headers)).json()
    assert body["totals"]["runs"] == 0
    assert body["totals"]["cost_usd"] == 0
    assert body["by_agent"] == body["by_model"] == body["series"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"granularity": "week"}, "granularity"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-03-01T10:00:00"}, "from"),  # no timezone
        ({"to": "9" * 40}, "to"),
        ({"to": "0.5"}, "to"),  # pydantic alone would read a Unix time: not the documented form
        ({"from": "1700000000"}, "from"),
        ({"limit": "5"}, "limit"),
    ],
)
async def test_garbage_query_answers_422(client, world: World, params, field) -> None:
    response = await client.get(url(world), params=params, headers=world.owner.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    if field is not None:
        assert error["field"] == field


@pytest.mark.parametrize("to", ["2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z"])
async def test_an_empty_or_inverted_window_answers_zeros(client, world: World, to) -> None:
    params = {"from": "2026-03-01T00:00:00Z", "to": to}
    response = await client.get(url(world), params=params, headers=world.owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["totals"]["runs"] == 0
    assert response.json()["series"] == []


async def test_budget_block_shows_this_months_spend(client, world: World) -> None:
    agent = await world.agent()
    await world.set_budget(cost="0.005", tokens=5000)
    await one_run(world, agent, utcnow(), 250)  # $0.0025, 500 tokens
    await one_run(world, agent, utcnow() - timedelta(days=40), 250)  # an earlier month
    body = (await client.get(url(world), headers=world.owner.headers)).json()
    assert body["budget"] == {
        "monthly_cost_limit_usd": 0.005,
        "monthly_token_limit": 5000,
        "month_cost_usd": 0.0025,
        "month_tokens": 500,
        "exhausted": False,
    }
    await one_run(world, agent, utcnow(), 250)
    body = (await client.get(url(world), headers=world.owner.headers)).json()
    assert body["budget"]["exhausted"] is True
    assert body["budget"]["month_cost_usd"] == 0.005


async def test_unknown_price_shows_as_null_and_counted(client, world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="anthropic", model="claude-that-does-not-exist")
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="anthropic",
        model="claude-that-does-not-exist",
        usage=Usage(input_tokens=5, output_tokens=5),
        succeeded=True,
        at=DAY1,
    )
    await finish(world.db, run, RunStatus.succeeded, at=DAY1)
    await world.db.commit()
    await one_run(world, agent, DAY1, 500)  # a priced one beside it: $0.005
    body = (await client.get(url(world), headers=world.owner.headers)).json()
    assert body["totals"]["cost_unknown_calls"] == 1
    assert body["totals"]["cost_usd"] == 0.005  # a lower bound, flagged by the count
    models = {m["model"]: m for m in body["by_model"]}
    assert models["claude-that-does-not-exist"]["cost_usd"] is None
    assert models["claude-that-does-not-exist"]["cost_unknown_calls"] == 1
    assert models["fake-1"]["cost_usd"] == 0.005
    assert body["series"][0]["cost_unknown_calls"] == 1


async def test_money_is_a_json_number_with_at_most_6_decimals(client, world: World) -> None:
    agent = await world.agent()
    run = await world.run(agent, provider="fake", model="fake-1")
    await record_call(
        world.db,
        run,
        attempt=1,
        provider="fake",
        model="fake-1",
        usage=Usage(input_tokens=1, output_tokens=0),
        succeeded=True,
        pricing_override={"input_per_mtok_usd": "1.5", "output_per_mtok_usd": "0"},
        at=DAY1,
    )
    await world.db.commit()
    assert run.cost_usd == Decimal("0.0000015")  # stored exactly
    response = await client.get(url(world), headers=world.owner.headers)
    # Rounded half-even to 6 places: 0.0000015 -> 0.000002, a JSON number.
    assert response.json()["totals"]["cost_usd"] == 0.000002
    assert '"cost_usd":2e-6' in response.text or '"cost_usd":0.000002' in response.text


async def test_metrics_are_per_project(client, world: World, auth) -> None:
    await one_run(world, await world.agent(), DAY1, 100)
    other = await auth.project(world.owner)
    response = await client.get(f"/api/v1/projects/{other.id}/metrics", headers=world.owner.headers)
    assert response.json()["totals"]["runs"] == 0


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("owner", 200),
        ("admin", 200),
        ("member", 200),
        ("viewer", 200),
        ("superuser", 200),
        ("outsider", 404),
        ("key", 200),
        ("key_without_scope", 403),
        ("key_other_project", 404),
        ("anonymous", 401),
    ],
)
async def test_role_matrix(client, world: World, auth, who: str, expected: int) -> None:
    actors = {
        "owner": lambda: world.owner,
        "admin": lambda: auth.member(world.project, Role.admin),
        "member": lambda: auth.member(world.project, Role.member),
        "viewer": lambda: auth.member(world.project, Role.viewer),
        "superuser": lambda: auth.user(superuser=True),
        "outsider": lambda: auth.user(),
        "key": lambda: auth.api_key(world.owner, scopes=["metrics:read"], project=world.project),
        "key_without_scope": lambda: auth.api_key(world.owner, scopes=["runs:read"]),
    }
    if who == "key_other_project":
        other = await auth.project(world.owner)
        headers = (await auth.api_key(world.owner, project=other)).headers
    elif who == "anonymous":
        headers = {}
    else:
        actor = actors[who]()
        headers = (await actor if hasattr(actor, "__await__") else actor).headers
    response = await client.get(url(world), headers=headers)
    assert response.status_code == expected, response.text
    assert "X-RateLimit-Limit" in response.headers or expected == 401


async def test_deleted_project_metrics_are_404(client, world: World) -> None:
    await world.db.execute(
        update(Project).where(Project.id == world.project.id).values(deleted_at=utcnow())
    )
    await world.db.commit()
    assert (await client.get(url(world), headers=world.owner.headers)).status_code == 404


# --- admin -----------------------------------------------------------------------------------


async def test_admin_metrics_is_for_superusers_only(client, world: World, auth) -> None:
    response = await client.get("/api/v1/admin/metrics", headers=world.owner.headers)
    assert response.status_code == 403
    assert (await client.get("/api/v1/admin/metrics")).status_code == 401


async def test_admin_metrics_shape_and_figures(client, app, world: World, auth) -> None:
    admin = await auth.user(superuser=True)
    agent = await world.agent()
    now = utcnow()
    for seconds in range(1, 11):  # ten runs of 1..10 s, finished in the last hour
        run = await world.run(agent, provider="fake", model="fake-1")
        await finish(
            world.db,
            run,
            RunStatus.succeeded,
            at=now - timedelta(minutes=5),
            started_at=now - timedelta(minutes=5, seconds=seconds),
        )
    old = await world.run(agent, provider="fake", model="fake-1")
    await finish(
        world.db,
        old,
        RunStatus.failed,
        at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=3),
    )
    await world.run(agent)  # queued
    running = await world.run(agent)
    await world.db.execute(update(Run).where(Run.id == running.id).values(status="running"))
    await world.db.commit()
    await one_run(world, agent, now - timedelta(days=3), 500)  # $0.005
    # Usage of a deleted project stays in the admin totals.
    await world.db.execute(
        update(Project).where(Project.id == world.project.id).values(deleted_at=utcnow())
    )
    await world.db.commit()
    redis, queue = app.state.redis, app.state.settings.QUEUE_NAME
    await redis.zadd(queue, {"job-a": 1, "job-b": 2})
    await redis.set(f"{WORKER_KEY_PREFIX}worker-1", "1", ex=30)
    await redis.set(f"{WORKER_KEY_PREFIX}worker-2", "1", ex=30)

    response = await client.get("/api/v1/admin/metrics", headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["queue_depth"] == 2
    assert body["workers"] == {"alive": 2, "ids": ["worker-1", "worker-2"]}
    assert body["runs_by_status"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 11,
        "failed": 1,
        "cancelled": 0,
        "timed_out": 0,
    }
    durations = body["run_duration_last_hour"]
    # The dataset's own run (2 s, 3 days ago) and the old one are outside the hour.
    assert durations == {
        "window_seconds": 3600,
        "count": 10,
        "p50_seconds": 5.5,
        "p95_seconds": 9.55,
    }
    assert body["usage"]["runs"] == 12
    assert body["usage"]["cost_usd"] == 0.005
    assert body["usage"]["total_tokens"] == 1000

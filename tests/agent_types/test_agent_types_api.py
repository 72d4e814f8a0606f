"""Agent types: superuser CRUD, validation, visibility of inactive types, race-free delete."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from backend.agent_types.models import AgentType
from backend.agent_types.seed import FAKE_TYPES, seed_fake_types
from backend.agents.models import Agent
from backend.audit.models import AuditLog
from backend.main import create_app
from tests.conftest import make_settings

URL = "/api/v1/agent-types"


def spec(**overrides):
    return {
        "name": "Echo",
        "slug": "echo",
        "provider": "fake",
        "model": "fake-echo",
        "system_prompt": "repeat",
        **overrides,
    }


async def test_superuser_crud(client, auth, db):
    admin = await auth.user(superuser=True)
    h = admin.headers
    r = await client.post(
        URL,
        json=spec(
            description="d",
            temperature=0.5,
            max_tokens=256,
            fallback_models=["fake-2"],
            pricing={"input_per_mtok_usd": "3", "output_per_mtok_usd": 15.25},
            config={"latency_ms": 10, "fail_times": 1, "fail_permanently": False, "chunks": 2},
        ),
        headers=h,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["timeout_seconds"] == 300
    assert created["max_retries"] == 3
    assert created["pricing"] == {
        "input_per_mtok_usd": 3,
        "output_per_mtok_usd": 15.25,
        "cache_read_per_mtok_usd": None,
        "cache_write_per_mtok_usd": None,
    }
    assert created["fallback_models"] == ["fake-2"]
    assert created["is_active"] is True
    assert created["config"]["chunks"] == 2
    assert created["temperature"] == 0.5
    # Stored as exact decimal strings, the form usage.pricing reads.
    stored = await db.scalar(select(AgentType.pricing).where(AgentType.slug == "echo"))
    assert stored == {"input_per_mtok_usd": "3", "output_per_mtok_usd": "15.25"}
    one = f"{URL}/{created['id']}"
    assert (await client.get(one, headers=h)).json() == created
    r = await client.patch(
        one,
        json={"name": "Echo 2", "pricing": None, "max_retries": 0, "temperature": None},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["pricing"], r.json()["max_retries"]) == ("Echo 2", None, 0)
    assert r.json()["temperature"] is None
    assert r.json()["updated_at"] > created["updated_at"]
    r = await client.get(URL, headers=h)
    assert [t["id"] for t in r.json()["data"]] == [created["id"]]
    assert r.json()["pagination"]["total"] == 1
    assert (await client.delete(one, headers=h)).status_code == 204
    assert (await client.get(one, headers=h)).status_code == 404
    assert (await client.patch(one, json={"name": "x"}, headers=h)).status_code == 404
    assert (await client.delete(one, headers=h)).status_code == 404
    r = await client.get(URL, params={"include_inactive": "true"}, headers=h)
    assert r.json()["data"] == []
    actions = await db.scalars(
        select(AuditLog.action)
        .where(AuditLog.action.like("agent_type.%"))
        .order_by(AuditLog.created_at)
    )
    assert list(actions) == ["agent_type.create", "agent_type.update", "agent_type.delete"]


async def test_slug_is_unique_among_live_types(client, auth):
    h = (await auth.user(superuser=True)).headers
    first = (await client.post(URL, json=spec(), headers=h)).json()
    r = await client.post(URL, json=spec(name="Other"), headers=h)
    assert r.status_code == 409
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("conflict", "slug")
    second = (await client.post(URL, json=spec(slug="echo-2"), headers=h)).json()
    r = await client.patch(f"{URL}/{second['id']}", json={"slug": "echo"}, headers=h)
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "slug"
    # A deleted type frees its slug.
    assert (await client.delete(f"{URL}/{first['id']}", headers=h)).status_code == 204
    assert (await client.post(URL, json=spec(), headers=h)).status_code == 201


async def test_inactive_types_are_hidden_and_refused(client, auth):
    su = await auth.user(superuser=True)
    owner = await auth.user()
    project = await auth.project(owner)
    active = (await client.post(URL, json=spec(slug="on"), headers=su.headers)).json()
    inactive = (
        await client.post(URL, json=spec(slug="off", is_active=False), headers=su.headers)
    ).json()
    r = await client.get(URL, headers=owner.headers)
    assert [t["slug"] for t in r.json()["data"]] == ["on"]
    assert (await client.get(f"{URL}/{inactive['id']}", headers=owner.headers)).status_code == 404
    assert (await client.get(f"{URL}/{active['id']}", headers=owner.headers)).status_code == 200
    r = await client.get(URL, params={"include_inactive": "true"}, headers=owner.headers)
    assert r.status_code == 403
    r = await client.get(URL, headers=su.headers)
    assert [t["slug"] for t in r.json()["data"]] == ["on"]
    r = await client.get(URL, params={"include_inactive": "true"}, headers=su.headers)
    assert [t["slug"] for t in r.json()["data"]] == ["off", "on"]  # newest first
    assert (await client.get(f"{URL}/{inactive['id']}", headers=su.headers)).status_code == 200

    agents_url = f"/api/v1/projects/{project.id}/agents"
    r = await client.post(
        agents_url, json={"agent_type_id": inactive["id"], "name": "a"}, headers=owner.headers
    )
    assert r.status_code == 422  # API.md: an inactive type is refused at spawn (422)
    assert r.json()["error"]["field"] == "agent_type_id"
    r = await client.patch(f"{URL}/{inactive['id']}", json={"is_active": True}, headers=su.headers)
    assert r.status_code == 200
    r = await client.post(
        agents_url, json={"agent_type_id": inactive["id"], "name": "a"}, headers=owner.headers
    )
    assert r.status_code == 201


async def test_delete_is_refused_while_a_live_agent_uses_the_type(client, auth):
    su = await auth.user(superuser=True)
    owner = await auth.user()
    project = await auth.project(owner)
    agent_type = (await client.post(URL, json=spec(), headers=su.headers)).json()
    one = f"{URL}/{agent_type['id']}"
    agents_url = f"/api/v1/projects/{project.id}/agents"
    r = await client.post(
        agents_url, json={"agent_type_id": agent_type["id"], "name": "a"}, headers=owner.headers
    )
    agent_url = f"{agents_url}/{r.json()['id']}"
    r = await client.delete(one, headers=su.headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert (await client.post(f"{agent_url}/pause", headers=owner.headers)).status_code == 200
    assert (await client.delete(one, headers=su.headers)).status_code == 409
    assert (await client.delete(agent_url, headers=owner.headers)).status_code == 200
    assert (await client.delete(one, headers=su.headers)).status_code == 204
    # The terminated agent keeps its type's name; nobody can spawn from the deleted type.
    r = await client.get(agent_url, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["agent_type_slug"] == "echo"
    r = await client.post(
        agents_url, json={"agent_type_id": agent_type["id"], "name": "b"}, headers=owner.headers
    )
    assert r.status_code == 404


async def test_only_superusers_manage_types(client, auth):
    su = await auth.user(superuser=True)
    user = await auth.user()
    existing = (await client.post(URL, json=spec(), headers=su.headers)).json()
    one = f"{URL}/{existing['id']}"
    # An API key is never enough, not even a superuser's: no key scope covers type management.
    su_key = await auth.api_key(su)
    for headers in (user.headers, su_key.headers):
        assert (await client.post(URL, json=spec(slug="x"), headers=headers)).status_code == 403
        assert (await client.patch(one, json={"name": "x"}, headers=headers)).status_code == 403
        assert (await client.delete(one, headers=headers)).status_code == 403
        assert (await client.get(one, headers=headers)).status_code == 200
        assert (await client.get(URL, headers=headers)).status_code == 200
    for method in ("GET", "POST"):
        r = await client.request(method, URL, json=spec(slug="y"))
        assert r.status_code == 401
    assert (await client.get(one)).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (spec(config={"latency_ms": "10"}), "config.latency_ms"),
        (spec(config={"latency_ms": -1}), "config.latency_ms"),
        (spec(config={"fail_times": 1.5}), "config.fail_times"),
        (spec(config={"fail_times": True}), "config.fail_times"),
        (spec(config={"fail_permanently": "yes"}), "config.fail_permanently"),
        (spec(config={"chunks": 0}), "config.chunks"),
        (spec(config={"latncy_ms": 5}), "config.latncy_ms"),
        (spec(provider="mystery"), "provider"),
        (spec(slug="Not A Slug"), "slug"),
        (spec(name="\x00"), "name"),
        (spec(timeout_seconds=0), "timeout_seconds"),
        (spec(max_retries=-1), "max_retries"),
        (spec(temperature=3), "temperature"),
        (spec(max_tokens=0), "max_tokens"),
        (
            spec(pricing={"input_per_mtok_usd": -1, "output_per_mtok_usd": 1}),
            "pricing.input_per_mtok_usd",
        ),
        (spec(pricing={"input_per_mtok_usd": 1}), "pricing.output_per_mtok_usd"),
        (
            spec(pricing={"input_per_mtok_usd": "NaN", "output_per_mtok_usd": 1}),
            "pricing.input_per_mtok_usd",
        ),
        (spec(config=[1]), "config"),
        (spec(unknown=1), "unknown"),
    ],
)
async def test_create_validation(client, auth, body, field):
    h = (await auth.user(superuser=True)).headers
    r = await client.post(URL, json=body, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["field"] == field


async def test_config_is_validated_against_the_resulting_provider(client, auth):
    h = (await auth.user(superuser=True)).headers
    loose = {"thinking": {"budget_tokens": 1024}}
    r = await client.post(
        URL, json=spec(provider="anthropic", model="claude-x", config=loose), headers=h
    )
    assert r.status_code == 201, r.text  # other providers' options are theirs to read
    one = f"{URL}/{r.json()['id']}"
    r = await client.patch(one, json={"provider": "fake"}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "config.thinking"
    r = await client.patch(one, json={"provider": "fake", "config": {"chunks": 3}}, headers=h)
    assert r.status_code == 200
    r = await client.patch(one, json={"config": {"chunks": "3"}}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "config.chunks"
    for bad in ({"name": None}, {"config": None}, {"is_active": None}):
        assert (await client.patch(one, json=bad, headers=h)).status_code == 422


@pytest.fixture
async def fast_client(settings, clean):
    """A client of an app with 100× rate limits, for many requests at once."""
    fast = make_settings(settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMIT_MULTIPLIER=100)
    app = create_app(fast)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_delete_and_spawn_racing_never_leave_a_live_agent_on_a_deleted_type(
    fast_client, auth, db
):
    su = await auth.user(superuser=True)
    owner = await auth.user()
    project = await auth.project(owner)
    agents_url = f"/api/v1/projects/{project.id}/agents"
    for round_ in range(6):
        r = await fast_client.post(URL, json=spec(slug=f"race-{round_}"), headers=su.headers)
        type_id = r.json()["id"]
        calls = [
            fast_client.post(
                agents_url, json={"agent_type_id": type_id, "name": f"a{i}"}, headers=owner.headers
            )
            for i in range(4)
        ]
        at = round_ % 5  # the delete arrives at a different position each round
        calls.insert(at, fast_client.delete(f"{URL}/{type_id}", headers=su.headers))
        codes = [r.status_code for r in await asyncio.gather(*calls)]
        assert set(codes) <= {201, 204, 404, 409}, codes
        spawned = codes.count(201)
        live = await db.scalar(
            select(func.count()).select_from(Agent).where(Agent.agent_type_id == type_id)
        )
        assert live == spawned
        # Deleted: no agent got the type; refused: at least one did, before the delete.
        assert (codes[at] == 204) == (spawned == 0), codes


async def test_seed_fake_types_is_idempotent(client, auth, db):
    assert await seed_fake_types(db) == len(FAKE_TYPES)
    await db.commit()
    assert await seed_fake_types(db) == 0
    await db.commit()
    types = {t.slug: t for t in await db.scalars(select(AgentType))}
    assert set(types) == {"echo", "slow-echo", "flaky-echo"}
    assert types["slow-echo"].config["latency_ms"] == 1000
    assert types["flaky-echo"].config["fail_times"] == 2
    assert all(t.provider == "fake" and t.is_active for t in types.values())
    # The seeded types are usable as they are.
    owner = await auth.user()
    project = await auth.project(owner)
    r = await client.post(
        f"/api/v1/projects/{project.id}/agents",
        json={"agent_type_id": str(types["echo"].id), "name": "demo"},
        headers=owner.headers,
    )
    assert r.status_code == 201

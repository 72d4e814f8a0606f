"""Operations endpoints: liveness, readiness (DB, Redis, migrations at head), Prometheus."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from tests.conftest import make_settings
from tests.support.apps import closed_port_url, running_app


async def test_health(client):
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["x-request-id"]


async def test_ready_when_everything_answers(client):
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_not_ready_without_redis(settings, client):
    config = make_settings(settings.DATABASE_URL, closed_port_url())
    async with running_app(config) as (_, c):
        r = await c.get("/ready")
        assert (await c.get("/health")).status_code == 200  # alive, just not ready
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert r.json()["database"] == "ok"
    assert r.json()["redis"] != "ok"


async def test_not_ready_without_the_database(settings, client):
    config = make_settings(closed_port_url("postgresql+asyncpg", "/agentry"), settings.REDIS_URL)
    async with running_app(config) as (_, c):
        r = await c.get("/ready")
    assert r.status_code == 503
    assert r.json()["database"] != "ok"
    assert r.json()["redis"] == "ok"
    assert "password" not in r.text.lower()
    assert "127.0.0.1" not in r.text


async def test_not_ready_when_migrations_are_not_at_head(client, engine):
    async with engine.begin() as conn:
        head = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        await conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    try:
        r = await client.get("/ready")
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": head}
            )
    assert r.status_code == 503
    assert r.json()["database"] == f"migrations at older, head is {head}"
    assert (await client.get("/ready")).status_code == 200


async def test_metrics_label_requests_by_route_template(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    assert (await client.get(f"/api/v1/projects/{project.id}", headers=owner.headers)).is_success
    stray = uuid.uuid4()
    assert (await client.get(f"/no/such/{stray}")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    body = r.text
    assert (
        'agentry_http_requests_total{method="GET",route="/api/v1/projects/{project_id}",'
        'status="200"}' in body
    )
    assert 'route="unmatched",status="404"' in body
    assert "agentry_http_request_duration_seconds_bucket" in body
    assert str(project.id) not in body
    assert str(stray) not in body

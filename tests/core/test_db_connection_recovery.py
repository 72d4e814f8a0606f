"""Connections lost under the pool (Postgres restarted) cost at most one 503, no app restart."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from tests.conftest import make_settings
from tests.support.apps import running_app

ME = "/api/v1/users/me"


async def _kill_backends(db, pids: list[int]) -> None:
    await db.execute(
        text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) AS pid"), {"p": pids}
    )
    for _ in range(100):
        alive = await db.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:p AS int[]))"),
            {"p": pids},
        )
        if not alive:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("backends still alive")


async def test_requests_recover_after_the_pools_connections_die(settings, auth, db):
    actor = await auth.user()
    config = make_settings(
        settings.DATABASE_URL, settings.REDIS_URL, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0
    )
    async with running_app(config) as (app, client):
        assert (await client.get(ME, headers=actor.headers)).status_code == 200
        async with app.state.engine.connect() as conn:  # the pool's only connection
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        await _kill_backends(db, [pid])

        first = await client.get(ME, headers=actor.headers)
        assert first.status_code in (200, 503), first.text
        if first.status_code == 503:
            assert first.json()["error"]["code"] == "unavailable"
        after = await client.get(ME, headers=actor.headers)
        assert after.status_code == 200, after.text
        # Writes (one transaction each) recover the same way.
        r = await client.post("/api/v1/projects", json={"name": "After"}, headers=actor.headers)
        assert r.status_code == 201, r.text

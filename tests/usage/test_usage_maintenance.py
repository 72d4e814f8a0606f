"""The maintenance cron purges what has expired and keeps everything else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from backend.auth.models import RefreshToken
from backend.core.db import create_sessionmaker, utcnow
from backend.core.idempotency import IdempotencyKey
from backend.maintenance import maintenance
from backend.runs.models import Run, RunStatus
from backend.runs.streams import purge_run_streams
from backend.usage import metrics
from backend.usage.models import UsageRollup
from backend.usage.tokens import Usage
from tests.usage.conftest import OVERRIDE, World, finish, record_call


def stream(run_id) -> str:
    return f"agentry:run:{run_id}:events"


async def test_maintenance_purges_expired_and_keeps_the_rest(
    world: World, app, engine, settings
) -> None:
    db, redis, now = world.db, app.state.redis, utcnow()
    user_id = world.owner.user.id
    db.add_all(
        [
            IdempotencyKey(
                principal="p",
                scope="s",
                key="old",
                request_hash="h",
                created_at=now - timedelta(hours=25),
            ),
            IdempotencyKey(
                principal="p",
                scope="s",
                key="new",
                request_hash="h",
                created_at=now - timedelta(hours=23),
            ),
        ]
    )
    dead, alive, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    tokens = [  # (family, expired this long ago)
        (dead, timedelta(days=30)),
        (dead, timedelta(days=8)),
        (alive, timedelta(days=30)),
        (alive, timedelta(days=-5)),  # newest still valid
        (recent, timedelta(days=6)),
    ]
    for family, ago in tokens:
        db.add(
            RefreshToken(
                user_id=user_id,
                family_id=family,
                token_digest=uuid.uuid4().hex,
                expires_at=now - ago,
                revoked_at=now - ago - timedelta(days=1),
            )
        )
    await db.commit()

    agent = await world.agent()
    old, fresh, running = [await world.run(agent) for _ in range(3)]
    await finish(
        db,
        old,
        RunStatus.succeeded,
        at=now - timedelta(seconds=settings.RUN_EVENTS_RETENTION_SECONDS + 60),
    )
    await finish(db, fresh, RunStatus.failed, at=now - timedelta(seconds=60))
    await db.execute(update(Run).where(Run.id == running.id).values(status="running"))
    await db.commit()
    orphan = uuid.uuid4()
    for run_id in (old.id, fresh.id, running.id, orphan):
        await redis.xadd(stream(run_id), {"event": "status"})
    await redis.set("agentry:run:not-a-uuid:events", "x")
    await redis.set("unrelated", "x")

    ctx = {"settings": settings, "sessionmaker": create_sessionmaker(engine), "redis": redis}
    purged = await maintenance(ctx, now=now)

    assert purged == {
        "idempotency_keys": 1,
        "refresh_tokens": 2,
        "rollups_compacted": 0,
        "run_event_streams": 1,
    }
    keys = set(await db.scalars(select(IdempotencyKey.key)))
    assert keys == {"new"}
    families = set(await db.scalars(select(RefreshToken.family_id)))
    assert families == {alive, recent}
    assert not await redis.exists(stream(old.id))
    for key in (
        stream(fresh.id),
        stream(running.id),
        stream(orphan),
        "agentry:run:not-a-uuid:events",
        "unrelated",
    ):
        assert await redis.exists(key), key
    # Idempotent: a second pass finds nothing more.
    again = await maintenance(ctx, now=now)
    assert set(again.values()) == {0}


async def test_streams_of_vanished_runs_go_once_idle_long_enough(world: World, app) -> None:
    redis = app.state.redis
    orphan = stream(uuid.uuid4())
    await redis.xadd(orphan, {"event": "status"})
    kept = await purge_run_streams(world.db, redis, before=utcnow(), orphan_idle=timedelta(hours=1))
    assert kept == 0
    assert await redis.exists(orphan)
    gone = await purge_run_streams(world.db, redis, before=utcnow(), orphan_idle=timedelta(0))
    assert gone == 1
    assert not await redis.exists(orphan)


async def test_old_hourly_rollups_merge_into_days_with_every_sum_unchanged(
    world: World, app, engine, settings
) -> None:
    now = datetime(2026, 6, 10, 12, 30, tzinfo=UTC)
    agents = [await world.agent(), await world.agent()]
    hours = [datetime(2026, 6, d, h, tzinfo=UTC) for d in (1, 2, 6, 9, 10) for h in (0, 5, 23)]
    for i, at in enumerate(hours):
        run = await world.run(agents[i % 2], provider="fake", model="fake-1")
        for model, override in (("fake-1", OVERRIDE), ("unpriced", None)):
            provider = "fake" if override else "openai"
            await record_call(
                world.db,
                run,
                attempt=1,
                provider=provider,
                model=model,
                usage=Usage(input_tokens=10 + i, output_tokens=i, cache_read_tokens=1),
                succeeded=True,
                pricing_override=override,
                at=at,
            )
        await finish(world.db, run, RunStatus.succeeded, at=at)
    await world.db.commit()

    async def snapshot(granularity: str) -> dict:
        got = await metrics.project_metrics(
            world.db, world.project, start=None, end=None, granularity=granularity, now=now
        )
        got.pop("window")
        return got

    before = await snapshot("day")
    rows_before = await world.db.scalar(select(func.count()).select_from(UsageRollup))
    ctx = {
        "settings": settings,
        "sessionmaker": create_sessionmaker(engine),
        "redis": app.state.redis,
    }
    purged = await maintenance(ctx, now=now)  # hourly kept from June 7 (3 days before June 10)
    assert purged["rollups_compacted"] > 0
    assert await snapshot("day") == before  # totals, agents, models, days, unknown counts
    rows_after = await world.db.scalar(select(func.count()).select_from(UsageRollup))
    assert rows_after < rows_before
    hourly = [p["bucket"] for p in (await snapshot("hour"))["series"]]
    midnight = datetime(2026, 6, 1, tzinfo=UTC)
    assert hourly[:3] == [midnight, midnight.replace(day=2), midnight.replace(day=6)]
    assert hourly[3:] == hours[9:]  # June 9 and 10 keep their hours
    again = await maintenance(ctx, now=now)
    assert again["rollups_compacted"] == 0

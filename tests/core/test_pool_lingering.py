"""The app's pool keeps overflow connections across bursts, within the same limit."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, exc, text

from backend.core.db import LingeringQueuePool, create_engine


@pytest.fixture
async def small_engine(settings):
    engine = create_engine(settings.DATABASE_URL, pool_size=1, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def opened(small_engine) -> list[object]:
    """One item per Postgres connection the pool opened."""
    seen: list[object] = []
    event.listen(small_engine.sync_engine.pool, "connect", lambda *_: seen.append(1))
    return seen


async def _burst(engine, size: int, hold: float = 0.05) -> None:
    async def one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(hold)

    await asyncio.gather(*(one() for _ in range(size)))


async def test_overflow_connections_serve_the_next_burst(small_engine, opened):
    pool = small_engine.sync_engine.pool
    assert isinstance(pool, LingeringQueuePool)
    for _ in range(3):
        await _burst(small_engine, 3)
    assert len(opened) == 3  # not 1 + 2 per burst
    assert (pool.checkedin(), pool.checkedout()) == (3, 0)


async def test_unused_overflow_connections_are_closed(small_engine, opened, monkeypatch):
    monkeypatch.setattr(LingeringQueuePool, "LINGER_SECONDS", -1.0)  # stale at once
    await _burst(small_engine, 3)
    await _burst(small_engine, 3)
    assert len(opened) == 5  # as the default pool: overflow closed on return
    assert small_engine.sync_engine.pool.checkedin() == 1


async def test_the_limit_is_unchanged(settings):
    engine = create_engine(settings.DATABASE_URL, pool_size=1, max_overflow=1)
    engine.sync_engine.pool._timeout = 0.2
    try:
        await _burst(engine, 2)  # one pooled, one lingering overflow connection
        with pytest.raises(exc.TimeoutError):
            await _burst(engine, 3, hold=0.5)
    finally:
        await engine.dispose()

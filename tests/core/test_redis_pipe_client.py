"""The rate limiter's pipelined Redis client: ordered replies, errors, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from backend.core import ratelimit
from backend.core.ratelimit import RateLimiter
from backend.core.redis_pipe import RedisPipe, RedisReplyError


@pytest.fixture
async def pipe(settings):
    client = RedisPipe(settings.REDIS_URL)
    yield client
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(pipe):
    values = [uuid.uuid4().hex for _ in range(50)]
    replies = await asyncio.gather(*(pipe.execute("ECHO", v) for v in values))
    assert replies == [v.encode() for v in values]


async def test_it_uses_the_database_of_the_url(pipe, settings, app):
    key = f"pipe-test:{uuid.uuid4().hex}"
    await pipe.execute("SET", key, "x", "EX", 60)
    assert await app.state.redis.get(key) == b"x"  # the app's client, same URL


async def test_an_error_reply_raises_and_later_replies_stay_in_order(pipe):
    with pytest.raises(RedisReplyError, match="unknown command"):
        await pipe.execute("NO-SUCH-COMMAND")
    assert await pipe.execute("PING") == b"PONG"


async def test_a_killed_connection_is_replaced(pipe, settings):
    client_id = await pipe.execute("CLIENT", "ID")
    admin = Redis.from_url(settings.REDIS_URL)
    try:
        await admin.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        await admin.aclose()
    # The loss may surface on the next command (ConnectionError); never later than that.
    try:
        await pipe.execute("PING")
    except ConnectionError:
        pass
    assert await pipe.execute("PING") == b"PONG"
    assert await pipe.execute("CLIENT", "ID") != client_id


async def test_a_silent_server_times_out_and_fails_what_waits_on_it():
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(f"redis://127.0.0.1:{port}/0", timeout=0.1)
    try:
        results = await asyncio.gather(
            pipe.execute("PING"), pipe.execute("PING"), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError | ConnectionError) for r in results), results
    finally:
        await pipe.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_limiter_reloads_its_script_when_redis_lost_it(settings, monkeypatch):
    limiter = RateLimiter(settings.REDIS_URL)
    try:
        # As after a Redis restart: the script's digest is unknown to the server.
        monkeypatch.setattr(ratelimit, "_HIT_SHA", "0" * 40)
        identity = f"user:{uuid.uuid4()}"
        first = await limiter.hit("pipe.test", "5/minute", identity)
        second = await limiter.hit("pipe.test", "5/minute", identity)
    finally:
        await limiter.aclose()
    assert first is not None
    assert second is not None
    assert (first.remaining, second.remaining) == (4, 3)
    assert second.reset_at >= first.reset_at - 1

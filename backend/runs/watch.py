"""Long-lived requests (SSE streams, `?wait` submits, WebSockets): a capped slot per caller,
and the caller's access re-checked while they last.

The cap: each caller (user id, or API key id) holds at most MAX_STREAMS_PER_CALLER slots, in a
Redis sorted set shared by every API process (member = one request, score = when its slot
expires). A slot is refreshed while its request lives, so the slots of a killed API expire by
themselves. While Redis is unreachable the cap fails open, like rate limits.

The re-check: every STREAM_RECHECK_SECONDS the request's own credentials go through the same
code as every route's (authenticate + the project gate, `authorize`). A deactivated user, a
revoked or expired key or token, a removed member or a deleted project ends the request with
that error (AccessLost). A database that cannot answer the check ends nothing.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from backend.core.errors import AppError, RateLimited
from backend.projects.dependencies import Permission
from backend.runs.dependencies import Credentials, authorize

log = structlog.get_logger()
T = TypeVar("T")

# KEYS[1]: the caller's slots; ARGV: slot id, max slots, slot lifetime (s). Returns 1 or 0.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])))
return 1
"""
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class AccessLost(Exception):
    """The caller no longer may use this request; `error` is what a new request would get."""

    def __init__(self, error: AppError) -> None:
        super().__init__(error.message)
        self.error = error


def slots_key(identity: str) -> str:
    return f"agentry:streams:{identity}"


@dataclass
class Lease:
    """One long-lived request's slot and watcher: `async with lease:` holds both. A slot taken
    by acquire() alone (a stream whose body never ran) expires by itself."""

    connection: HTTPConnection
    project_id: uuid.UUID
    permission: Permission
    credentials: Credentials
    identity: str

    def __post_init__(self) -> None:
        self.state = self.connection.app.state
        settings = self.state.settings
        self.max_slots: int = settings.MAX_STREAMS_PER_CALLER
        self.interval: float = settings.STREAM_RECHECK_SECONDS
        self.lifetime = max(15.0, 3 * self.interval)
        self.slot = uuid.uuid4().hex
        self.acquired = False
        self._watcher: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Take a slot (RateLimited at the cap). Untaken, `async with` takes it."""
        if not await self._script(_ACQUIRE, self.slot, self.max_slots, self.lifetime):
            raise RateLimited(
                f"At most {self.max_slots} open streams, waits and WebSockets per caller",
                headers={"Retry-After": str(max(1, math.ceil(self.interval)))},
            )
        self.acquired = True

    async def __aenter__(self) -> Lease:
        if not self.acquired:
            await self.acquire()
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError, AccessLost):
                await self._watcher
        with suppress(RedisError, OSError):
            await self.state.redis.zrem(slots_key(self.identity), self.slot)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, unless access is lost first (then it is cancelled: AccessLost)."""
        assert self._watcher is not None, "use the lease in `async with` first"
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({task, self._watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
            self._watcher.result()  # raises AccessLost
        return task.result()

    async def iterate(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """`source`'s items until it ends or access is lost (AccessLost)."""
        iterator = aiter(source)
        while True:
            try:
                item = await self.run(anext(iterator))
            except StopAsyncIteration:
                return
            yield item

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with suppress(RedisError, OSError):
                await self._script(_REFRESH, self.slot, self.lifetime)
            await self._check()

    async def _check(self) -> None:
        try:
            async with self.state.sessionmaker() as session:
                await authorize(
                    self.connection,
                    session,
                    self.project_id,
                    self.permission,
                    token=self.credentials.token,
                    api_key=self.credentials.api_key,
                )
                await session.commit()  # an API key's last_used_at, when due
        except AppError as exc:
            log.info("stream_access_lost", code=exc.code, identity=self.identity)
            raise AccessLost(exc) from None
        except Exception as exc:  # noqa: BLE001 - an unanswered check ends nothing
            log.warning("stream_access_check_failed", error_type=type(exc).__name__)

    async def _script(self, script: str, *args: Any) -> int:
        try:
            return await self.state.redis.eval(script, 1, slots_key(self.identity), *args)
        except (RedisError, OSError) as exc:
            log.warning("stream_slots_unavailable", error_type=type(exc).__name__)
            return 1  # fail open, as rate limits do

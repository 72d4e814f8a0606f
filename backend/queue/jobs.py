"""The producer side of the job queue: the Redis client every process uses, and enqueueing,
aborting and pruning jobs by id, with ARQ's own records (its workers read them)."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript

# KEYS: the job key, its result key, the queue; ARGV: expiry ms, job record, score, job id.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
Redis = ArqRedis


def connect(url: str, **options: Any) -> Redis:
    """The process's client (lazy: nothing is connected until the first command)."""
    return ArqRedis.from_url(url, **options)


class Jobs:
    """Jobs on one queue, by id: an id is refused while its job (or its kept result) exists."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis, self.queue_name = redis, queue_name
        self._script: AsyncScript | None = None

    async def enqueue(
        self, function: str, args: tuple[Any, ...], job_id: str, *, defer: float | None = None
    ) -> bool:
        """True when a new job was queued; False when a job with that id already exists.

        What ArqRedis.enqueue_job does (the same job record, score and expiry, refused while
        the job or its result exists), as one script: one round trip instead of three.
        """
        now = timestamp_ms()
        score = now + (round(defer * 1000) if defer else 0)
        expires = score - now + self.redis.expires_extra_ms
        job = serialize_job(function, args, {}, None, now)
        keys = [job_key_prefix + job_id, result_key_prefix + job_id, self.queue_name]
        return bool(await self._enqueue(keys=keys, args=[expires, job, score, job_id]))

    @property
    def _enqueue(self) -> AsyncScript:
        if self._script is None:
            self._script = self.redis.register_script(_ENQUEUE)
        return self._script

    async def abort(self, job_id: str) -> None:
        """Ask the worker running that job to stop it (the abort set, seen at each poll)."""
        await self.redis.zadd(abort_jobs_ss, {job_id: timestamp_ms()})

    async def prune_aborts(self, max_age_ms: int) -> None:
        """ARQ keeps aborts of ids it never saw running forever (arq#485): drop old ones."""
        await self.redis.zremrangebyscore(abort_jobs_ss, "-inf", timestamp_ms() - max_age_ms)

    async def depth(self) -> int:
        """Jobs waiting (due or deferred)."""
        return int(await self.redis.zcard(self.queue_name))

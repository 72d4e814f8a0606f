"""The worker side of the job queue (ARQ, pinned at 0.28): `QueueWorker`, arq's Worker made
to survive Redis outages, to lease the jobs it takes, and cheap per job; `options` builds its
settings from plain job and cron specs. The domains never import arq: they give coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import structlog
from arq import cron, func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from backend.core.batching import Batcher
from backend.core.errors import is_connection_error
from backend.core.logging import innermost_frame

log = structlog.get_logger()
T = TypeVar("T")

# A woken poll loop still waits this long: the jobs that end together are replaced together.
MIN_POLL_GAP_SECONDS = 0.002
# Backoff while Redis (the poll loop) or Postgres (startup) cannot be reached.
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 0.2, 5.0
# KEYS: the queue, then each candidate's in-progress key; ARGV: how many to take, now (ms),
# the in-progress TTL (ms), then the candidates' ids. Takes the candidates that are due and not
# in progress anywhere, in order, marking them in progress: arq's per-job WATCH/EXISTS/ZSCORE/
# MULTI check, for a batch, atomically.
_TAKE_JOBS = """
local taken = {}
local queue, abort_set = KEYS[1], KEYS[2]
local limit, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local in_progress, job_prefix, retry_prefix = ARGV[4], ARGV[5], ARGV[6]
for i = 7, #ARGV do
  if #taken >= 5 * limit then break end
  local id = ARGV[i]
  if redis.call('EXISTS', in_progress .. id) == 0 then
    local score = redis.call('ZSCORE', queue, id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', in_progress .. id, ttl, '1')
      local tries = redis.call('INCR', retry_prefix .. id)
      redis.call('EXPIRE', retry_prefix .. id, 88400)
      taken[#taken + 1] = id
      taken[#taken + 1] = score
      taken[#taken + 1] = redis.call('GET', job_prefix .. id)
      taken[#taken + 1] = tries
      taken[#taken + 1] = redis.call('ZREM', abort_set, id)
    end
  end
end
return taken
"""


@dataclass(frozen=True)
class Job:
    """A function the workers run when a job names it."""

    coroutine: Callable[..., Awaitable[Any]]
    name: str
    timeout: float
    max_tries: int = 1


@dataclass(frozen=True)
class Cron:
    """A function every worker schedules (one of them runs each occurrence)."""

    coroutine: Callable[..., Awaitable[Any]]
    timeout: float
    second: set[int] | None = None
    minute: set[int] | None = None
    run_at_startup: bool = False


def _logged(coroutine: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A cron that fails is logged by its class and place, then runs again at its next time:
    arq would log the exception's text (SQL, parameters) and its stack."""

    async def run(ctx: dict[str, Any]) -> Any:
        try:
            return await coroutine(ctx)
        except Exception as exc:  # noqa: BLE001 - logged here, retried at the next occurrence
            log.error(
                "cron_failed",
                cron=coroutine.__name__,
                error_type=type(exc).__name__,
                where=innermost_frame(exc.__traceback__),
            )
            return None

    return run


def options(
    *,
    jobs: list[Job],
    crons: list[Cron],
    redis_url: str,
    queue_name: str,
    max_jobs: int,
    poll_delay: float,
    job_timeout: float,
    lease_seconds: float,
    on_startup: Callable[[dict[str, Any]], Awaitable[None]],
    on_shutdown: Callable[[dict[str, Any]], Awaitable[None]],
    ctx: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments of QueueWorker."""
    return {
        "functions": [
            # keep_result=0: a finished job's id is free again at once.
            func(
                j.coroutine,  # type: ignore[arg-type]
                name=j.name,
                timeout=j.timeout,
                max_tries=j.max_tries,
                keep_result=0,
            )
            for j in jobs
        ],
        "cron_jobs": [
            cron(
                _logged(c.coroutine),  # type: ignore[arg-type]
                name=f"cron:{c.coroutine.__name__}",
                second=c.second,
                minute=c.minute,
                run_at_startup=c.run_at_startup,
                timeout=c.timeout,
            )
            for c in crons
        ],
        "queue_name": queue_name,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "max_jobs": max_jobs,
        "poll_delay": poll_delay,
        "job_timeout": job_timeout,
        "keep_result": 0,
        "allow_abort_jobs": True,
        "health_check_interval": 60,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": ctx,
        "lease_seconds": lease_seconds,
    }


class _Fetched:
    """A view of the pool for one job's run_job whose first pipeline (the job, its try count,
    its abort) answers what the take script already read."""

    def __init__(self, pool: Any, results: list[Any]) -> None:
        self._pool = pool
        self._results: list[Any] | None = results

    def pipeline(self, **kwargs: Any) -> Any:
        if self._results is None:
            return self._pool.pipeline(**kwargs)
        results, self._results = self._results, None
        return _Answered(results)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _Answered:
    def __init__(self, results: list[Any]) -> None:
        self._results = results

    async def __aenter__(self) -> _Answered:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # get, incr, expire, zrem: already done

    async def execute(self) -> list[Any]:
        return self._results


class _JobView:
    """The worker, as one run_job sees it: its pool answers the job's first pipeline."""

    def __init__(self, worker: Worker, pool: _Fetched) -> None:
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "pool", pool)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._worker, name, value)


class _HiredisPacking:
    """A redis-py asyncio connection that packs commands with hiredis (the asyncio client
    packs them in Python, ~8x slower: the worker's largest Redis cost per run)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py's: a command name with spaces ("CONFIG GET") is sent as several args.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


async def _pack_with_hiredis(redis: ArqRedis) -> None:
    pool = redis.connection_pool
    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    await pool.disconnect()
    pool.reset()  # the connections made so far are dropped; new ones use the class


class QueueWorker(Worker):
    """arq's Worker (0.28, pinned) made cheap per job, its semantics kept:
    - start_jobs takes the due jobs of a poll, with what run_job's first round trip reads
      (the job, its try count, its abort), in one script call: arq checks and marks each job
      with four round trips, one job after the other, re-checking at every poll the jobs this
      worker already runs, then reads each with a fifth;
    - finish_job finishes the jobs that end together in one MULTI/EXEC;
    - main polls also when a job ends or this process enqueues one, and packs commands with
      hiredis;
    - close() always completes.
    """

    def __init__(self, *args: Any, lease_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # arq keeps a taken job its worker's for the job timeout + 10 s (an hour here): a
        # worker killed before claiming the run would block it that long. A short lease,
        # renewed while the worker lives, hands it to another worker within seconds.
        self.in_progress_timeout_s = lease_seconds
        self._leases_renewed = 0.0
        self._wake = asyncio.Event()
        self._take_jobs: AsyncScript | None = None
        self._finishing: Batcher[tuple[Any, ...], None] | None = None

    async def main(self) -> None:
        """arq 0.28's Worker.main, surviving Redis and Postgres outages (it reconnects with
        backoff and reports itself unhealthy meanwhile, never exits), renewing the leases of
        the jobs it runs, with its Redis connections packing with hiredis and a poll loop that
        also wakes when a job ends or this process enqueues one (a freed slot or an agent's
        next run does not wait for the next poll)."""
        asyncio.get_running_loop().set_exception_handler(_log_loop_error)
        if self._pool is None:
            self._pool = await until_connected("redis", self._connect)
        self.ctx.update(redis=self.pool, worker=self)
        if self.on_startup:
            await self.on_startup(self.ctx)
        try:
            await self._poll_until_done()
        finally:
            heartbeat = self.ctx.pop("heartbeat", None)
            if heartbeat is not None:
                heartbeat.cancel()  # a worker that stopped polling is not alive

    async def _connect(self) -> ArqRedis:
        pool = await create_pool(
            self.redis_settings,
            job_deserializer=self.job_deserializer,
            job_serializer=self.job_serializer,
            default_queue_name=self.queue_name,
            expires_extra_ms=self.expires_extra_ms,
            retry=0,
        )
        await _pack_with_hiredis(pool)
        return pool

    async def _poll_until_done(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            self._wake.clear()
            try:
                await self._poll_iteration()
                await self._renew_leases(started)
                if self.burst and await self._burst_done():
                    return
            except Exception as exc:  # noqa: BLE001 - a worker never exits on an error
                failures += 1
                await self._wait_after(exc, failures)
                continue
            if failures:
                failures = 0
                log.info("worker_reconnected")
            self.on_redis(True)
            await asyncio.sleep(MIN_POLL_GAP_SECONDS)
            rest = self.poll_delay_s - (loop.time() - started)
            if rest > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(rest):
                        await self._wake.wait()

    async def _wait_after(self, exc: Exception, failures: int) -> None:
        delay = min(RECONNECT_MIN_SECONDS * 2 ** (failures - 1), RECONNECT_MAX_SECONDS)
        if _is_redis_down(exc):
            self.on_redis(False)
            log.warning("worker_redis_unavailable", error_type=type(exc).__name__, retry_in=delay)
        else:
            log.error(
                "worker_poll_failed",
                error_type=type(exc).__name__,
                where=innermost_frame(exc.__traceback__),
                retry_in=delay,
            )
        await asyncio.sleep(delay)

    def on_redis(self, ok: bool) -> None:
        """Called after every poll: whether Redis answered (a subclass reports it)."""

    async def _renew_leases(self, now: float) -> None:
        """Every third of a lease, push the lease of every job this worker runs."""
        if now - self._leases_renewed < self.in_progress_timeout_s / 3 or not self.tasks:
            return
        self._leases_renewed = now
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in self.tasks:
                pipe.pexpire(in_progress_key_prefix + job_id, ttl_ms)
            await pipe.execute()

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or not await self.pool.zcard(
            self.queue_name
        ):
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    def wake(self) -> None:
        """Poll now rather than at the next poll_delay (a job this process just enqueued)."""
        self._wake.set()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        candidates = [i for i in (j.decode() for j in job_ids) if i not in self.tasks]
        if free <= 0 or not candidates:
            return
        if self._take_jobs is None:
            self._take_jobs = self.pool.register_script(_TAKE_JOBS)
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        prefixes = [in_progress_key_prefix, job_key_prefix, retry_key_prefix]
        taken = await self._take_jobs(
            keys=[self.queue_name, abort_jobs_ss],
            args=[free, timestamp_ms(), ttl_ms, *prefixes, *candidates],
        )
        for n in range(0, len(taken), 5):
            raw_id, raw_score, payload, tries, aborted = taken[n : n + 5]
            await self.sem.acquire()  # never waits: `free` slots were available
            self.job_counter += 1
            job_id = raw_id.decode()
            fetched = _Fetched(self.pool, [payload, tries, 1, aborted])
            task = self.loop.create_task(
                Worker.run_job(_JobView(self, fetched), job_id, int(float(raw_score)))  # type: ignore[arg-type]
            )
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish_job, with the jobs that finish together in one MULTI/EXEC."""
        if self._finishing is None:
            self._finishing = Batcher(self._finish_jobs, key=lambda job: job[0])
        job = (job_id, finish, result_data, result_timeout_s, keep_result_forever)
        await self._finishing((*job, incr_score, keep_in_progress))

    async def _finish_jobs(self, jobs: list[tuple[Any, ...]]) -> list[None]:
        async with self.pool.pipeline(transaction=True) as tr:
            for job in jobs:
                self._finish_commands(tr, *job)
            await tr.execute()
        return [None] * len(jobs)

    def _finish_commands(
        self,
        tr: Any,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        # The commands of arq 0.28's Worker.finish_job, for one job.
        delete_keys = []
        in_progress_key = in_progress_key_prefix + job_id
        if keep_in_progress is None:
            delete_keys.append(in_progress_key)
        else:
            tr.pexpire(in_progress_key, to_ms(keep_in_progress))
        if finish:
            if result_data:
                expire = None if keep_result_forever else result_timeout_s
                tr.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
            delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(self.queue_name, job_id)
        elif incr_score:
            tr.zincrby(self.queue_name, incr_score, job_id)
        if delete_keys:
            tr.delete(*delete_keys)

    async def close(self) -> None:
        # arq's close() gathers its job tasks without return_exceptions: a task cancelled
        # outside the job body would abort close() before on_shutdown and the pool close.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        pending = [*self.tasks.values(), *([self.main_task] if self.main_task else [])]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._pool is None:
            return
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's default handler prints the exception's repr (SQL, parameters) and a stack."""
    exc = context.get("exception")
    log.error(
        "worker_task_error",
        message=context.get("message"),
        error_type=type(exc).__name__ if exc else None,
        where=innermost_frame(exc.__traceback__) if exc else None,
    )


def _is_redis_down(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError)


async def until_connected(what: str, connect: Callable[[], Awaitable[T]]) -> T:
    """`connect()` again, with backoff, while the server cannot be reached (a worker started
    before Redis or Postgres waits for them rather than exiting)."""
    delay = RECONNECT_MIN_SECONDS
    while True:
        try:
            return await connect()
        except Exception as exc:
            if not (_is_redis_down(exc) or is_connection_error(exc)):
                raise
            log.warning(f"worker_{what}_unavailable", error_type=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

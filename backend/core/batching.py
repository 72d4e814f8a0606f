"""Batching of concurrent requests: what arrives while a batch is in flight goes in the next.
Used by the worker's database statements (backend/runs/pipeline.py) and its queue
(backend/queue/worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import structlog

from backend.core.errors import is_connection_error

log = structlog.get_logger()
T = TypeVar("T")
U = TypeVar("U")
MAX_BATCH = 100
MAX_IN_FLIGHT = 2  # batches of one kind at once (a second one keeps the other core busy)


class Batcher(Generic[T, U]):
    """Calls `run(items)` for requests that arrive together: requests made while a batch is
    in flight go in the next one (at most `max_in_flight` at once, `MAX_BATCH` each, a key at
    most once each). A batch that fails is retried one request at a time, so one bad request
    fails alone."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[U]]],
        key: Callable[[T], Hashable],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._run, self._key, self._max_in_flight = run, key, max_in_flight
        self._pending: list[tuple[T, asyncio.Future[U]]] = []
        self._senders: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> U:
        future: asyncio.Future[U] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._senders) < self._max_in_flight:
            task = asyncio.create_task(self._send())
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await future

    async def _send(self) -> None:
        await asyncio.sleep(0)  # the requests of this loop turn go together
        while self._pending:
            await self._deliver(self._take())

    def _take(self) -> list[tuple[T, asyncio.Future[U]]]:
        batch: list[tuple[T, asyncio.Future[U]]] = []
        rest: list[tuple[T, asyncio.Future[U]]] = []
        keys: set[Hashable] = set()
        for request in self._pending:
            key = self._key(request[0])
            if len(batch) < MAX_BATCH and key not in keys:
                keys.add(key)
                batch.append(request)
            else:
                rest.append(request)
        self._pending = rest
        return batch

    async def _deliver(self, batch: list[tuple[T, asyncio.Future[U]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            # One at a time only if the batch's content may be at fault, not the connection.
            if len(batch) > 1 and not is_connection_error(exc):
                log.warning("pipeline_batch_failed", size=len(batch), exc_info=True)
                for request in batch:
                    await self._deliver([request])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

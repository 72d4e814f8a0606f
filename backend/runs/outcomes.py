"""How an attempt ends: success, retry (back to queued, a deferred next attempt), failure,
or release (the worker is stopping). One short transaction each (backend/runs/pipeline.py),
agent row first; then, after its commit, the events and the next job.

Every conclusion is guarded by "still running, by this worker, at this attempt": a run that was
cancelled or recovered meanwhile is never overwritten, but the tokens its calls consumed are
still counted (provider calls are recorded once per run, attempt and model: never twice).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.exceptions import RedisError

from backend.config import Settings
from backend.core.db import storable
from backend.runs import metrics as runs_metrics
from backend.runs import steps, streams
from backend.runs.attempt import Attempt, WorkerState
from backend.runs.pipeline import Conclusion as C
from backend.runs.providers import Message
from backend.runs.schemas import RunRow
from backend.usage import service as usage

log = structlog.get_logger()


class Taken(Exception):
    """The run is no longer this attempt's: cancelled, or recovered by another worker."""


async def checkpoint(w: WorkerState, state: Attempt) -> None:
    """Commit the step(s) that just ended with their calls' usage (the run stays running);
    Taken when the run is no longer this attempt's (its calls are counted all the same)."""
    had_calls = bool(state.calls)
    row = await _run(w, state, C.step)
    state.calls = []
    if row is None or not row.stepped:
        raise Taken
    state.committed += state.steps
    state.steps = []
    state.budget = usage.BudgetState.of(row._row)
    if had_calls:
        state.events.add(streams.USAGE, streams.usage_data(row))


async def conclude(w: WorkerState, state: Attempt) -> str:
    c, error = state.claimed, state.error
    if state.action is not None:
        return await _parked(
            w, state, await _run(w, state, C.requires_action, j_action=state.action)
        )
    if state.completion is not None:
        assert state.model is not None
        messages = [Message("user", c.input), *state.messages]
        values = {
            "j_output": storable(state.completion.text),
            "j_model": state.model,
            "j_messages": [steps.message_json(m) for m in messages],
        }
        return await _finished(w, state, await _run(w, state, C.succeeded, **values))
    assert error is not None
    if error.transient and c.retries < c.max_retries:
        delay = backoff(w.settings, c.attempt)
        row = await _run(w, state, C.retry, j_error=_error(error))
        return "retrying" if await _requeued(w, state, row, delay=delay) else "taken"
    kind = C.timed_out if state.timed_out else C.failed
    return await _finished(w, state, await _run(w, state, kind, j_error=_error(error)))


def _error(error: Any) -> dict[str, str]:
    return {"code": storable(error.code), "message": storable(error.message)}


async def _run(w: WorkerState, state: Attempt, kind: C, **values: Any) -> Any:
    """The conclusion's transaction (batched with others): the calls, the run, the agent. The
    run row after it (a RunRow), or None when nothing was written."""
    c = state.claimed
    job = {
        "run_id": str(c.run_id),
        "agent_id": c.agent_id,  # for the lock, not sent
        "j_worker": w.worker_id,
        "j_attempt": c.attempt,
        "j_provider": c.provider,
        **values,
    }
    calls = [
        (call.model, call.usage, call.succeeded, call.error, call.step) for call in state.calls
    ]
    priced = usage.priced_calls(
        c.run_id, c.provider, calls, pricing_override=c.pricing, at=datetime.now(UTC)
    )
    row = await w.db.conclude(kind, job, priced, state.steps)
    return None if row is None else RunRow(row)


async def _finished(w: WorkerState, state: Attempt, run: Any) -> str:
    """After a final conclusion's commit: the agent's next run, then the run's last events."""
    if run is None or not run.moved:
        await _announce_usage(state, run)
        return "taken"
    if run.released and run.next_id is not None:
        await _enqueue(w, run.next_id, run.next_attempt)
    runs_metrics.observe_finished(run.status, run.started_at, run.finished_at)
    # The run's stream ends with what committed; this job need not wait for Redis (its slot
    # goes to the next run sooner): the process's Publisher sends it, flushed at shutdown.
    await state.events.close(streams.final_events(run), final=True, wait=False)
    return run.status


async def _parked(w: WorkerState, state: Attempt, run: Any) -> str:
    """After the commit of a required action: the run waits, holding no worker."""
    if run is None or not run.moved:
        await _announce_usage(state, run)
        return "taken"
    assert state.action is not None
    events = [(streams.USAGE, streams.usage_data(run))] if state.calls else []
    events += [(streams.STATUS, {"status": run.status}), (streams.REQUIRES_ACTION, state.action)]
    await state.events.close(events, wait=False)
    return run.status


async def _announce_usage(state: Attempt, run: Any) -> None:
    """The run was not ours to conclude: publish what was pending and its new usage, if any."""
    events = [(streams.USAGE, streams.usage_data(run))] if run is not None and state.calls else []
    await state.events.close(events)


async def _requeued(w: WorkerState, state: Attempt, run: Any, *, delay: float | None) -> bool:
    """After a requeue's commit: usage, `queued` on the stream, and the next attempt's job."""
    if run is None or not run.moved:
        await _announce_usage(state, run)
        return False
    c = state.claimed
    queued: dict[str, Any] = {"status": "queued", "attempt": c.attempt}
    if delay:
        queued["retry_in_seconds"] = round(delay, 3)
    events = [(streams.USAGE, streams.usage_data(run))] if state.calls else []
    await state.events.close([*events, (streams.STATUS, queued)])
    await _enqueue(w, c.run_id, c.attempt, defer=delay)
    return True


async def _enqueue(w: WorkerState, run_id: uuid.UUID, attempt: int, **kwargs: Any) -> None:
    """After a commit: a job lost to a Redis outage is the sweeper's to re-derive."""
    try:
        await w.dispatcher.enqueue(run_id, attempt, **kwargs)
    except (RedisError, OSError) as exc:
        log.warning("run_enqueue_deferred", run_id=str(run_id), error_type=type(exc).__name__)


def backoff(settings: Settings, attempt: int) -> float:
    """Exponential in the attempt number, capped; the upper half jittered (no thundering herd)."""
    ceiling = min(
        settings.RUN_RETRY_MAX_SECONDS, settings.RUN_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


async def release(w: WorkerState, state: Attempt) -> None:
    """This job is being cancelled: count what was consumed; if the worker is merely stopping
    (the run is still ours), put the run back in the queue for another worker."""
    try:
        await _requeued(w, state, await _run(w, state, C.release), delay=None)
    except Exception:  # noqa: BLE001 - the reaper recovers it from the heartbeat
        log.warning("run_release_failed", run_id=str(state.claimed.run_id), exc_info=True)


async def conclude_taken(w: WorkerState, state: Attempt) -> None:
    """The run was cancelled or recovered elsewhere: only count the tokens already consumed."""
    if not state.calls:
        await state.events.close()
        return
    await _announce_usage(state, await _run(w, state, C.account))

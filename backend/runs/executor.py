"""One attempt of a run on a worker: claim it, call the provider, then conclude (outcomes).

No transaction is open while a provider is called: the claim, and the attempt's conclusion
(every call's usage, the status change, the agent) are separate short transactions
(backend/runs/pipeline.py). The attempt's events (running, deltas, the conclusion's) go to its
stream in order through one RunEvents, a Redis round trip per batch rather than per event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import structlog

from backend.runs import outcomes, streams
from backend.runs.attempt import Attempt, Call, Claimed, WorkerState
from backend.runs.providers import (
    CompletionRequest,
    Message,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    get_provider,
)
from backend.usage import service as usage
from backend.usage.service import BudgetState

log = structlog.get_logger()


async def execute(w: WorkerState, run_id: uuid.UUID, attempt: int) -> str:
    """The ARQ job body: run attempt `attempt + 1` of the run if this job may claim it."""
    claimed = await claim(w, run_id, attempt)
    if claimed is None:
        return "skipped"  # not the agent's turn, paused, cancelled, or a stale job
    w.held.add(run_id)
    try:
        return await _attempt(w, Attempt(claimed, streams.RunEvents(w.dispatcher.events, run_id)))
    finally:
        w.held.discard(run_id)


async def _attempt(w: WorkerState, state: Attempt) -> str:
    c = state.claimed
    state.events.add(streams.STATUS, {"status": "running", "attempt": c.attempt})
    if c.budget is not None and c.budget.exhausted:
        # Queued before the limit was reached: it ends here, having consumed nothing.
        state.error = PermanentProviderError("budget_exceeded", usage.budget_message(c.budget))
        return await outcomes.conclude(w, state)
    task = asyncio.create_task(call_provider(w, state))
    w.active[c.run_id] = task
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # This job was aborted (the run is already cancelled) or the worker is stopping.
            await asyncio.shield(outcomes.release(w, state))
            raise
        await asyncio.shield(outcomes.conclude_taken(w, state))  # the heartbeat took it away
        return "taken"
    finally:
        w.active.pop(c.run_id, None)
    return await outcomes.conclude(w, state)


async def claim(w: WorkerState, run_id: uuid.UUID, attempt: int) -> Claimed | None:
    """Atomically: run queued→running and agent idle/waiting→working, in one transaction
    (backend/runs/pipeline.py, batched with concurrent claims), with what the attempt needs."""
    row = await w.db.claim(run_id, attempt)
    return None if row is None else _claimed(row)


def _claimed(row: Any) -> Claimed:
    roles, contents = row["roles"] or [], row["contents"] or []
    history = [Message(role, content) for role, content in zip(roles, contents, strict=True)]
    request = CompletionRequest(
        model=row["model"],
        system_prompt=row["system_prompt"] or "",
        messages=[*history, Message("user", row["input"])],
        temperature=row["temperature"],
        max_tokens=row["max_tokens"],
        config=dict(row["config"] or {}),
        attempt=row["attempt"],
    )
    return Claimed(
        run_id=row["id"],
        project_id=row["project_id"],
        agent_id=row["agent_id"],
        attempt=row["attempt"],
        input=row["input"],
        timeout=float(row["timeout_seconds"] or row["type_timeout_seconds"]),
        max_retries=row["max_retries"],
        provider=row["provider"],
        models=[row["model"], *(row["fallback_models"] or [])],
        request=request,
        pricing=row["pricing"],
        budget=None if row["cost_limit"] is None and row["token_limit"] is None else _budget(row),
    )


def _budget(row: Any) -> BudgetState:
    names = ("cost_limit", "token_limit", "month_cost", "month_tokens", "cost_spent")
    return BudgetState(**{name: row[name] for name in names}, tokens_spent=row["tokens_spent"])


async def call_provider(w: WorkerState, state: Attempt) -> None:
    """The attempt: the primary model, then each fallback while failures are transient."""
    c = state.claimed

    async def on_delta(text: str) -> None:
        state.events.add(streams.DELTA, {"text": text})

    try:
        provider = get_provider(c.provider, w.settings)
        async with asyncio.timeout(c.timeout):
            for index, model in enumerate(c.models):
                if index:  # readers drop the partial output of the model that failed
                    running = {"status": "running", "attempt": c.attempt, "model": model}
                    state.events.add(streams.STATUS, running)
                try:
                    completion = await provider.complete(replace(c.request, model=model), on_delta)
                except ProviderError as exc:
                    _failed_call(state, model, exc)
                    if not exc.transient or index == len(c.models) - 1:
                        raise
                    continue
                state.calls.append(Call(model, completion.usage, succeeded=True))
                state.completion, state.model = completion, model
                return
    except TimeoutError:
        state.timed_out = True
        state.error = TransientProviderError(
            "timeout", f"The attempt did not finish within {c.timeout:g} s"
        )
    except ProviderError as exc:
        state.error = exc
    except Exception:  # noqa: BLE001 - an adapter bug must fail the run, not the worker
        log.exception("provider_call_crashed", run_id=str(c.run_id))
        state.error = PermanentProviderError("internal_error", "The provider call failed")


def _failed_call(state: Attempt, model: str, exc: ProviderError) -> None:
    if exc.usage is not None:
        error = {"code": exc.code, "message": exc.message}
        state.calls.append(Call(model, exc.usage, succeeded=False, error=error))

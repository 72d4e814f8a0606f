"""One attempt of a run on a worker: claim it, run its steps, then conclude (outcomes).

A run is a loop of steps (API.md "Tools"): a model step calls the provider with the messages so
far and the offered tools (backend/runs/toolbox.py); its tool calls become tool steps, executed
here (MCP servers) or parked as a required action (client tools, approvals). Each step that
ends is committed before the next begins (a checkpoint, with its calls' usage); the last one
goes with the conclusion. A claim resumes after the run's last committed step
(steps.replay), so a worker's death repeats only the step in flight.

No transaction is open while a provider or a tool is called: the claim, each checkpoint and
the conclusion are separate short transactions (backend/runs/pipeline.py). The attempt's events (running, deltas, the conclusion's) go to its
stream in order through one RunEvents, a Redis round trip per batch rather than per event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from backend.core.db import storable
from backend.runs import outcomes, steps, streams, toolbox
from backend.runs.attempt import Attempt, Call, Claimed, WorkerState
from backend.runs.providers import (
    Completion,
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
    task = asyncio.create_task(run_steps(w, state))
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
    except outcomes.Taken:
        await asyncio.shield(outcomes.conclude_taken(w, state))  # a checkpoint found it gone
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
    columns = ("roles", "contents", "tool_calls", "tool_call_ids", "is_errors")
    history = [steps.message_of(*m) for m in zip(*(row[n] or [] for n in columns), strict=True)]
    # A history cut by its length limit starts at a user message (never at a tool result).
    while history and history[0].role != "user":
        history.pop(0)
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
        retries=row["retries"],
        input=row["input"],
        timeout=float(row["timeout_seconds"] or row["type_timeout_seconds"]),
        max_retries=row["max_retries"],
        provider=row["provider"],
        models=[row["model"], *(row["fallback_models"] or [])],
        request=request,
        pricing=row["pricing"],
        budget=BudgetState.of(row),
        history=history,
        tools=list(row["tools"] or []),
        mcp_servers=list(row["mcp_servers"] or []),
        max_steps=row["max_steps"],
        tool_timeout=float(row["tool_timeout_seconds"]),
        action_timeout=float(row["action_timeout_seconds"]),
        steps=list(row["steps"] or []),
    )


async def run_steps(w: WorkerState, state: Attempt) -> None:
    """The attempt: steps from where the run's committed steps left off (API.md "Tools"), each
    committed when it ends, until an answer, an error or a required action."""
    c = state.claimed
    state.committed, state.budget = list(c.steps), c.budget
    try:
        async with asyncio.timeout(c.timeout):
            box = await toolbox.offer(w.mcp, c, w.settings.secret_key)
            while await _step(w, state, box):
                pass
    except TimeoutError:
        state.timed_out = True
        state.error = TransientProviderError(
            "timeout", f"The attempt did not finish within {c.timeout:g} s"
        )
    except ProviderError as exc:
        state.error = exc
    except outcomes.Taken:
        raise
    except Exception:  # noqa: BLE001 - an adapter bug must fail the run, not the worker
        log.exception("run_step_crashed", run_id=str(c.run_id))
        state.error = PermanentProviderError("internal_error", "The provider call failed")


async def _step(w: WorkerState, state: Attempt, box: toolbox.Toolbox) -> bool:
    """One step (or the server tool calls of one model step); False once the attempt has its
    outcome (a completion, an error, a required action)."""
    c = state.claimed
    done = steps.replay(state.committed)
    state.messages = done.messages
    if done.pending:
        return await _tool_steps(w, state, box, done)
    if done.model_steps >= c.max_steps:
        state.error = PermanentProviderError(
            "max_steps_exceeded", f"The run used its {c.max_steps} model steps without answering"
        )
        return False
    if state.budget is not None and state.budget.exhausted:
        state.error = PermanentProviderError("budget_exceeded", usage.budget_message(state.budget))
        return False
    request = replace(
        c.request,
        messages=[*c.request.messages, *done.messages],
        tools=box.specs,
        step=done.model_steps,
    )
    started = datetime.now(UTC)
    completion = await _model_call(w, state, request, done.next_index)
    if completion is None:
        return False
    assert state.model is not None
    calls = [{"id": t.id, "name": t.name, "arguments": t.arguments} for t in completion.tool_calls]
    row = steps.row(
        c.run_id,
        done.next_index,
        "model",
        "succeeded",
        c.attempt,
        provider=c.provider,
        model=state.model,
        text=storable(completion.text),
        tool_calls=calls,
        started_at=started,
        finished_at=datetime.now(UTC),
    )
    state.steps.append(row)
    if not completion.tool_calls:
        state.completion = completion
        state.messages = [*done.messages, Message("assistant", row["text"])]
        return False
    await outcomes.checkpoint(w, state)
    for call in completion.tool_calls:
        data = {"id": call.id, "name": call.name, "arguments": call.arguments}
        state.events.add(streams.TOOL_CALL, data | {"executor": box.executor(call.name)})
    return True


async def _model_call(
    w: WorkerState, state: Attempt, request: CompletionRequest, index: int
) -> Completion | None:
    """A model step's call: the primary model, then each fallback while failures are
    transient. None after an error (the attempt's `error`, with a failed step row when the
    calls consumed tokens, so that the run's usage stays the sum of its model steps)."""
    c = state.claimed

    async def on_delta(text: str) -> None:
        state.events.add(streams.DELTA, {"text": text})

    provider = get_provider(c.provider, w.settings)
    started = datetime.now(UTC)
    for position, model in enumerate(c.models):
        if position:  # readers drop the partial output of the model that failed
            running = {"status": "running", "attempt": c.attempt, "model": model}
            state.events.add(streams.STATUS, running)
        try:
            completion = await provider.complete(replace(request, model=model), on_delta)
        except ProviderError as exc:
            _failed_call(state, model, exc, index)
            if exc.transient and position < len(c.models) - 1:
                continue
            state.error = exc
            if any(call.step == index for call in state.calls):
                failed = steps.row(c.run_id, index, "model", "failed", c.attempt)
                failed |= {"provider": c.provider, "model": model, "text": ""}
                failed |= {"started_at": started.isoformat()}
                failed["finished_at"] = datetime.now(UTC).isoformat()
                state.steps.append(failed)
            return None
        state.calls.append(Call(model, completion.usage, succeeded=True, step=index))
        state.model = model
        return completion
    raise AssertionError("a run has at least one model")


async def _tool_steps(
    w: WorkerState, state: Attempt, box: toolbox.Toolbox, done: steps.Replay
) -> bool:
    """The server tool calls of the last model step, each committed as it ends; then, for
    client tools and calls awaiting approval, the required action that parks the run."""
    c = state.claimed
    clients, approvals = [], []
    for call in done.pending:
        approved = done.approved.get(call.id)
        executor = box.executor(call.name)
        if executor == "client":
            clients.append(call)
            continue
        if approved is None and box.needs_approval(call.name):
            approvals.append(call)
            continue
        started = datetime.now(UTC)
        result = await box.call(w.mcp, call, timeout=c.tool_timeout)
        row = steps.row(
            c.run_id,
            done.next_index if approved is None else approved["index"],
            "tool",
            "failed" if result.is_error else "succeeded",
            c.attempt,
            tool_call_id=call.id,
            name=call.name,
            arguments=call.arguments,
            executor="server",
            output=storable(result.output),
            is_error=result.is_error,
            approval=None if approved is None else approved["approval"],
            started_at=started,
            finished_at=datetime.now(UTC),
        )
        state.steps.append(row)
        await outcomes.checkpoint(w, state)
        data = {"tool_call_id": call.id, "output": row["output"], "is_error": result.is_error}
        state.events.add(streams.TOOL_RESULT, data)
        return True  # the next step sees this result among the committed ones
    waiting = approvals or clients
    if not waiting:
        return True
    expires = datetime.now(UTC) + timedelta(seconds=c.action_timeout)
    state.action = {
        "type": "approve_tool_calls" if approvals else "submit_tool_outputs",
        "tool_calls": [{"id": t.id, "name": t.name, "arguments": t.arguments} for t in waiting],
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
    }
    return False


def _failed_call(state: Attempt, model: str, exc: ProviderError, index: int) -> None:
    if exc.usage is not None:
        error = {"code": exc.code, "message": exc.message}
        state.calls.append(Call(model, exc.usage, succeeded=False, error=error, step=index))

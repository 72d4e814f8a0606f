"""Answers to a run's required action (API.md "Tools, steps and required actions"): the
caller's outputs of client tools, or a person's decisions on server tool calls. The POST
endpoints and the WebSocket call `answer`.

One transaction: the agent row locked, then the run (the lock order of backend/runs/service.py),
the answer checked against what the run waits for, then one statement of the state machine's
and the steps' fragments: a tool step per pending call (backend/runs/steps.py) and the run
requires_action -> queued, its required action cleared (and a run.status_changed event). The
agent keeps its status (waiting, or paused: the claim or a resume starts the run again). After
commit: the results the answer settled on the run's stream, then its job.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agents.models import Agent, AgentStatus
from backend.audit import service as audit
from backend.core.db import utcnow
from backend.core.errors import InvalidTransition, NotFound, ValidationFailed
from backend.projects.dependencies import ProjectContext
from backend.runs import dispatch, steps, streams
from backend.runs import state as run_state
from backend.runs.models import Run, RunStatus
from backend.runs.schemas import Approvals, ToolOutputs

SUBMIT, APPROVE = "submit_tool_outputs", "approve_tool_calls"
DENIED = "denied"  # a denial's default message


def _answer_sql() -> str:
    run_old, run_new = run_state.transition_ctes(
        RunStatus.queued,
        only_from={RunStatus.requires_action},
        values={"required_action": "NULL", "action_expires_at": "NULL"},
        counters=steps.STEPS_SET,
        joins=steps.STEPS_JOIN,
    )
    job = "\njob AS (SELECT CAST(:run_id AS uuid) AS run_id)"
    ctes = [job, run_old, steps.insert_ctes(when="o.status = 'requires_action'"), run_new]
    sql = f"WITH {','.join(ctes)}\nSELECT rn.moved FROM run_new rn"
    # SQLAlchemy's text() takes `:name` before `::type` for a cast, not a parameter.
    return re.sub(r"(?<![:\w]):([a-z_]+)::([a-z]+)", r"CAST(:\1 AS \2)", sql)


_ANSWER = text(_answer_sql())


async def answer(
    session: AsyncSession,
    ctx: ProjectContext,
    run_id: uuid.UUID,
    body: ToolOutputs | Approvals,
    *,
    agent_id: uuid.UUID | None = None,
) -> Run:
    """Answer the run's required action (`agent_id`: only a run of that agent); the run,
    queued again. 404, 409 invalid_transition (not waiting for this kind of answer), or 422
    (not every pending call answered exactly once)."""
    kind, field = (
        (SUBMIT, "tool_outputs") if isinstance(body, ToolOutputs) else (APPROVE, "decisions")
    )
    owner = await session.scalar(
        select(Run.agent_id).where(Run.id == run_id, Run.project_id == ctx.project.id)
    )
    if owner is None or agent_id not in (None, owner):
        raise NotFound(f"Run {run_id} not found")
    agent_status = await session.scalar(
        select(Agent.status).where(Agent.id == owner).with_for_update()
    )
    run = await session.scalar(
        select(Run)
        .where(Run.id == run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert run is not None  # runs are deleted only with their project, whose row we read
    action = run.required_action or {}
    if run.status != RunStatus.requires_action or action.get("type") != kind:
        waits = f"waits for {action.get('type')}" if run.status == RunStatus.requires_action else ""
        raise InvalidTransition(
            f"Run {run_id} is {run.status}{' and ' + waits if waits else ''}: it takes no"
            f" {field.replace('_', ' ')}"
        )
    now = utcnow()
    if run.action_expires_at is not None and run.action_expires_at <= now:
        # Too late, even if the reaper has not ended it yet (it will: action_expired).
        raise InvalidTransition(
            f"Run {run_id}'s required action expired at {run.action_expires_at.isoformat()}"
        )
    calls = action.get("tool_calls") or []
    answers = _matched(calls, body, field)
    rows = [
        _step(run, index, call, answers[call["id"]], ctx, waiting_since=run.updated_at, now=now)
        for index, call in enumerate(calls, start=run.steps)
    ]
    moved = await session.scalar(_ANSWER, {"run_id": run_id, "steps": json.dumps(rows)})
    if not moved:  # cannot happen while we hold the run's lock; never half-answer
        raise InvalidTransition(f"Run {run_id} is no longer waiting for an answer")
    await session.refresh(run)
    _audit(session, ctx, run, kind, calls, answers)
    _after_commit(session, run, rows)
    if agent_status != AgentStatus.paused:  # paused: its resume dispatches the run
        await dispatch.dispatch_head(session, owner)
    return run


def _matched(
    calls: Sequence[dict[str, Any]], body: ToolOutputs | Approvals, field: str
) -> dict[str, Any]:
    """Each pending call's answer, by call id: every call answered exactly once, no other."""
    items = body.tool_outputs if isinstance(body, ToolOutputs) else body.decisions
    pending = [call["id"] for call in calls]
    found: dict[str, Any] = {}
    for item in items:
        if item.tool_call_id in found:
            raise ValidationFailed(
                f"{field}: tool call {item.tool_call_id} is answered twice", field=field
            )
        if item.tool_call_id not in pending:
            raise ValidationFailed(
                f"{field}: {item.tool_call_id} is not a pending tool call of this run"
                f" (pending: {', '.join(pending)})",
                field=field,
            )
        found[item.tool_call_id] = item
    if missing := [call_id for call_id in pending if call_id not in found]:
        raise ValidationFailed(
            f"{field}: no answer for pending tool calls {', '.join(missing)}", field=field
        )
    return found


def _step(
    run: Run,
    index: int,
    call: dict[str, Any],
    item: Any,
    ctx: ProjectContext,
    *,
    waiting_since: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The tool step of one answered call. A client output or a denial ends the step (it
    lasted the wait: the run entered requires_action at `waiting_since`, its last write); an
    approved call's step starts now, `running` until the worker has executed it."""
    values: dict[str, Any] = {
        "tool_call_id": call["id"],
        "name": call["name"],
        "arguments": call.get("arguments") or {},
        "started_at": waiting_since,
        "finished_at": now,
    }
    if not hasattr(item, "approve"):  # a client tool's output
        values |= {"executor": "client", "output": item.output, "is_error": item.is_error}
        status = "failed" if item.is_error else "succeeded"
        return steps.row(run.id, index, "tool", status, run.attempt, **values)
    principal = ctx.principal
    values["executor"] = "server"
    values["approval"] = {
        "approved": item.approve,
        "message": item.message,
        "actor_user_id": str(principal.user.id),
        "actor_api_key_id": str(principal.api_key.id) if principal.api_key else None,
    }
    if item.approve:
        values |= {"started_at": now, "finished_at": None}
        return steps.row(run.id, index, "tool", "running", run.attempt, **values)
    values |= {"output": f"denied: {item.message or DENIED}", "is_error": True}
    return steps.row(run.id, index, "tool", "failed", run.attempt, **values)


def _audit(
    session: AsyncSession,
    ctx: ProjectContext,
    run: Run,
    kind: str,
    calls: Sequence[dict[str, Any]],
    answers: dict[str, Any],
) -> None:
    """Who answered what (outputs themselves are not copied: they may be large or private)."""
    if kind == SUBMIT:
        action, key = "run.tool_outputs", "tool_outputs"
        items = [
            {"tool_call_id": c["id"], "name": c["name"], "is_error": answers[c["id"]].is_error}
            for c in calls
        ]
    else:
        action, key = "run.approval", "decisions"
        items = [
            {
                "tool_call_id": c["id"],
                "name": c["name"],
                "approve": answers[c["id"]].approve,
                "message": answers[c["id"]].message,
            }
            for c in calls
        ]
    audit.record(
        session,
        ctx.principal,
        action,
        project_id=ctx.project.id,
        target_type="run",
        target_id=run.id,
        details={"agent_id": str(run.agent_id), key: items},
    )


def _after_commit(session: AsyncSession, run: Run, rows: list[dict[str, Any]]) -> None:
    """The results the answer settled (client outputs, denials), then `queued`, on the run's
    stream; an approved call's result follows when the worker has executed it."""
    events: list[tuple[str, dict[str, Any]]] = [
        (streams.TOOL_RESULT, {k: row[k] for k in ("tool_call_id", "output", "is_error")})
        for row in rows
        if row["status"] != "running"
    ]
    events.append((streams.STATUS, {"status": RunStatus.queued.value}))
    run_id = run.id
    dispatch.later(session, lambda d: d.publish(run_id, events))

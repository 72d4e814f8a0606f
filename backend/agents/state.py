"""The agent state machine: the only writer of `agents.status`.

A transition is one conditional UPDATE (guarded by the allowed source statuses,
locking the row so concurrent requests serialize) plus one history row in the
same transaction. Zero rows back means the transition is not allowed from the
current status (409) or the agent does not exist in that project (404).
No read-then-write: two racing requests can never both win from one status.
`transition_all` does the same for every agent of a project in one statement, and
`transition_ctes` the same as CTEs inside a caller's statement (the worker's fused claim and
conclusion of a run: see backend/runs/pipeline.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import DateTime, String, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from backend.agents.models import Agent, AgentEvent, AgentStatus
from backend.core.db import utcnow
from backend.core.errors import InvalidTransition, NotFound

S = AgentStatus
TRANSITIONS: dict[AgentStatus, frozenset[AgentStatus]] = {
    S.idle: frozenset({S.working, S.paused, S.terminated}),
    S.working: frozenset({S.idle, S.waiting, S.paused, S.terminated}),
    S.waiting: frozenset({S.idle, S.working, S.paused, S.terminated}),
    S.paused: frozenset({S.idle, S.terminated}),
    S.terminated: frozenset(),
}


def sources(to: AgentStatus) -> frozenset[AgentStatus]:
    """The statuses from which `to` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


def is_allowed(frm: AgentStatus | str, to: AgentStatus | str) -> bool:
    return AgentStatus(to) in TRANSITIONS[AgentStatus(frm)]


async def transition(
    session: AsyncSession,
    agent_id: uuid.UUID,
    to: AgentStatus,
    *,
    project_id: uuid.UUID | None = None,
    only_from: Iterable[AgentStatus] | None = None,
    actor_user_id: uuid.UUID | None = None,
    actor_api_key_id: uuid.UUID | None = None,
    run_id: uuid.UUID | None = None,
    reason: str | None = None,
    **values: Any,
) -> Agent:
    """Move an agent to `to`, or raise InvalidTransition / NotFound.

    `only_from` narrows the table's sources (a worker claims only idle or waiting agents).
    `values` are other columns written by the same statement (terminated_at, …).
    """
    allowed = sources(to) if only_from is None else sources(to) & set(only_from)
    scope = [Agent.id == agent_id]
    if project_id is not None:
        scope.append(Agent.project_id == project_id)
    # Lock first so the guard below is evaluated against the latest committed status.
    old = select(Agent.id, Agent.status).where(*scope).with_for_update().cte("old")
    now = utcnow()
    stmt = (
        update(Agent)
        .where(Agent.id == old.c.id, old.c.status.in_([s.value for s in allowed]))
        .values(status=to.value, updated_at=now, last_activity_at=now, **values)
        .returning(Agent, old.c.status)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        await _raise_why(session, scope, to)
    agent, from_status = row
    session.add(
        AgentEvent(
            agent_id=agent.id,
            from_status=from_status,
            to_status=to.value,
            actor_user_id=actor_user_id,
            actor_api_key_id=actor_api_key_id,
            run_id=run_id,
            reason=reason,
        )
    )
    return agent


async def transition_all(
    session: AsyncSession,
    to: AgentStatus,
    *,
    project_id: uuid.UUID,
    actor_user_id: uuid.UUID | None = None,
    actor_api_key_id: uuid.UUID | None = None,
    reason: str | None = None,
    **values: Any,
) -> list[uuid.UUID]:
    """Move every agent of a project that may enter `to`; returns their ids.

    One statement whatever the number of agents: lock, guarded UPDATE, history rows.
    """
    allowed = [s.value for s in sources(to)]
    old = (
        select(Agent.id, Agent.status)
        .where(Agent.project_id == project_id, Agent.status.in_(allowed))
        .with_for_update()
        .cte("old")
    )
    now = utcnow()
    moved = (
        update(Agent)
        .where(Agent.id == old.c.id, old.c.status.in_(allowed))
        .values(status=to.value, updated_at=now, last_activity_at=now, **values)
        .returning(Agent.id, old.c.status.label("from_status"))
        .cte("moved")
    )
    history = select(
        func.gen_random_uuid(),
        moved.c.id,
        moved.c.from_status,
        literal(to.value, String),
        literal(actor_user_id, UUID(as_uuid=True)),
        literal(actor_api_key_id, UUID(as_uuid=True)),
        literal(reason, String),
        literal(now, DateTime(timezone=True)),
    )
    stmt = (
        insert(AgentEvent)
        .from_select(
            [
                "id",
                "agent_id",
                "from_status",
                "to_status",
                "actor_user_id",
                "actor_api_key_id",
                "reason",
                "created_at",
            ],
            history,
        )
        .returning(AgentEvent.agent_id)
    )
    return list(await session.scalars(stmt))


async def _raise_why(session: AsyncSession, scope: list[Any], to: AgentStatus) -> None:
    current = await session.scalar(select(Agent.status).where(*scope))
    if current is None:
        raise NotFound("Agent not found")
    raise InvalidTransition(f"Cannot change status from {current} to {to.value}")


def transition_ctes(
    to: AgentStatus,
    *,
    agents: str,
    only_from: Iterable[AgentStatus] | None = None,
    when: str = "true",
    counters: str = "",
    touch_when: str = "false",
    run_id: str = "NULL",
    reason: str = "NULL",
    now: str = "now()",
) -> str:
    """The same transition as `transition`, for a set of agents, as CTEs inside a caller's
    statement (the worker's fused claims and conclusions of runs, backend/runs/pipeline.py).

    Gives `agent_old` (id, status), `agent_moved` (id, agent_type_id, from_status, moved) and
    `agent_history` (a history row per agent moved). The rows are locked FOR UPDATE in id order
    (their latest committed status is the one guarded). A caller whose other CTEs read the
    agents' runs must have locked these agent rows in an earlier statement of its transaction,
    so that its statement's snapshot follows every earlier transaction of these agents.

    All arguments are SQL text: `agents` a query of agent ids; `when` the caller's condition
    for moving agent `o` (on top of the table's sources; `o.id`, `o.status` and sub-selects);
    `counters` assignments to `a` applied whether or not the status moves, when `touch_when`
    holds for `o` (e.g. usage counters); `run_id` (may read `m.id`, the agent), `reason` and
    `now` for the history rows.
    """
    allowed = sources(to) if only_from is None else sources(to) & set(only_from)
    listed = ", ".join(f"'{s.value}'" for s in sorted(allowed)) or "NULL"
    extra = f",\n        {counters}" if counters else ""
    # `go` is evaluated once per agent (the OFFSET 0 keeps the planner from inlining it).
    return f"""
agent_old AS (
    SELECT a.id, a.status FROM agents a WHERE a.id IN ({agents}) ORDER BY a.id FOR UPDATE
),
agent_moved AS (
    UPDATE agents a SET
        status = CASE WHEN o.go THEN '{to.value}' ELSE a.status END,
        updated_at = CASE WHEN o.go THEN {now} ELSE a.updated_at END,
        last_activity_at = CASE WHEN o.go THEN {now} ELSE a.last_activity_at END{extra}
    FROM (
        SELECT o.id, o.status, (o.status IN ({listed}) AND ({when})) AS go
        FROM agent_old o OFFSET 0
    ) o
    WHERE a.id = o.id AND (o.go OR ({touch_when}))
    RETURNING a.id, a.agent_type_id, o.status AS from_status, o.go AS moved
),
agent_history AS (
    INSERT INTO agent_events (id, agent_id, from_status, to_status, run_id, reason, created_at)
    SELECT gen_random_uuid(), m.id, m.from_status, '{to.value}', {run_id}, {reason}, {now}
    FROM agent_moved m WHERE m.moved
)"""

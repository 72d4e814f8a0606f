"""The agent state machine: the only writer of `agents.status`.

A transition is one conditional UPDATE (guarded by the allowed source statuses, the rows
locked so concurrent requests serialize) plus one history row per agent moved, in the same
statement. Nothing moved means the transition is not allowed from the current status (409) or
the agent does not exist in that project (404). No read-then-write: two racing requests can
never both win from one status.

One implementation, `transition_ctes` (SQL), for every caller: the API's `transition` (one
agent) and `transition_project` (every agent of a project) execute it through their session;
the worker's fused claims and conclusions of runs embed it (backend/runs/pipeline.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from backend.agents.models import Agent, AgentStatus
from backend.agents.schemas import AgentOut
from backend.core.db import utcnow
from backend.core.errors import InvalidTransition, NotFound
from backend.webhooks import outbox

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


# Queued and running runs of agent `m`, as GET counts them.
PENDING_RUNS = (
    "(SELECT count(*) FROM runs q WHERE q.agent_id = m.id AND q.status IN ('queued', 'running'))"
)


def _render(snapshot: Any) -> Any:
    # [the row as written, what GET joins to it] (older events: one merged object)
    row = snapshot if isinstance(snapshot, dict) else snapshot[0] | snapshot[1]
    return AgentOut.model_validate(row).model_dump(mode="json")


outbox.register("agent", _render)


def event_source(
    rows: str, *, where: str, from_status: str, to: str, reason: str, now: str, pending_runs: str
) -> str:
    """The agent.status_changed outbox source for agents `m` read from `rows` (a FROM item):
    the row as written, and what GET joins to it (json built as text: see outbox)."""
    return f"""
SELECT m.project_id, m.id AS ordering_key, json_build_object(
        'agent', json_build_array(to_json(m), json_build_object(
            'agent_type_name', t.name, 'agent_type_slug', t.slug, 'project_name', p.name,
            'project_slug', p.slug, 'pending_runs', {pending_runs})),
        'from_status', {from_status}, 'to_status', {to}, 'reason', CAST({reason} AS text)
    ) AS payload, {now} AS created_at
FROM {rows} m JOIN agent_types t ON t.id = m.agent_type_id JOIN projects p ON p.id = m.project_id
WHERE {where}"""


def transition_ctes(
    to: AgentStatus,
    *,
    agents: str,
    only_from: Iterable[AgentStatus] | None = None,
    when: str = "true",
    values: dict[str, str] | None = None,
    counters: str = "",
    touch_when: str = "false",
    run_id: str = "NULL",
    reason: str = "NULL",
    actor_user_id: str = "NULL",
    actor_api_key_id: str = "NULL",
    now: str = "now()",
    pending_runs: str = PENDING_RUNS,
) -> str:
    """The transition of a set of agents, as CTEs of a caller's statement.

    Gives `agent_old` (id, status), `agent_moved` (every column of each agent written, with
    `from_status` and `moved`), `agent_history` (a history row per agent moved) and the
    outbox's `agent_ev_events` (its agent.status_changed events). The rows
    are locked FOR UPDATE in id order (their latest committed status is the one guarded). A
    caller whose other CTEs read the agents' runs must have locked these agent rows in an
    earlier statement of its transaction, so that its statement's snapshot follows every
    earlier transaction of these agents.

    All arguments are SQL text: `agents` a query of agent ids; `when` the caller's condition
    for moving agent `o` (on top of the table's sources; `o.id`, `o.status` and sub-selects);
    `values` other columns written with the status (column -> SQL); `counters` assignments to
    `a` applied whether or not the status moves, when `touch_when` holds for `o` (e.g. usage
    counters); `run_id` (may read `m.id`, the agent), `reason`, the actors and `now` for the
    history rows; `pending_runs` the agent's unfinished runs after the caller's statement.
    """
    allowed = sources(to) if only_from is None else sources(to) & set(only_from)
    listed = ", ".join(f"'{s.value}'" for s in sorted(allowed)) or "NULL"
    sets = [
        f"{column} = CASE WHEN o.go THEN {sql} ELSE a.{column} END"
        for column, sql in {
            "status": f"'{to.value}'",
            "updated_at": now,
            "last_activity_at": now,
            **(values or {}),
        }.items()
    ]
    if counters:
        sets.append(counters)
    assignments = ",\n        ".join(sets)
    # `go` is evaluated once per agent (the OFFSET 0 keeps the planner from inlining it).
    return f"""
agent_old AS (
    SELECT a.id, a.status FROM agents a WHERE a.id IN ({agents}) ORDER BY a.id FOR UPDATE
),
agent_moved AS (
    UPDATE agents a SET
        {assignments}
    FROM (
        SELECT o.id, o.status, (o.status IN ({listed}) AND ({when})) AS go
        FROM agent_old o OFFSET 0
    ) o
    WHERE a.id = o.id AND (o.go OR ({touch_when}))
    RETURNING a.*, o.status AS from_status, o.go AS moved
),
agent_history AS (
    INSERT INTO agent_events (id, agent_id, from_status, to_status, run_id, reason,
        actor_user_id, actor_api_key_id, created_at)
    SELECT gen_random_uuid(), m.id, m.from_status, '{to.value}', {run_id}, {reason},
        {actor_user_id}, {actor_api_key_id}, {now}
    FROM agent_moved m WHERE m.moved
),{
        outbox.ctes(
            "agent_ev",
            outbox.EventType.agent_status_changed,
            event_source(
                "agent_moved",
                where="m.moved",
                from_status="m.from_status",
                to=f"'{to.value}'",
                reason=reason,
                now=now,
                pending_runs=pending_runs,
            ),
        )
    }"""


@dataclass(frozen=True)
class Moved:
    id: uuid.UUID
    name: str
    from_status: AgentStatus


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
) -> Moved:
    """Move one agent to `to`, or raise NotFound (no such agent in that project) or
    InvalidTransition. `only_from` narrows the table's sources; `values` are other columns
    written by the same statement (terminated_at, name, ...)."""
    scope = "id = :agent_id" + (" AND project_id = :project_id" if project_id else "")
    rows = await _execute(
        session,
        to,
        scope,
        only_from,
        values,
        agent_id=agent_id,
        project_id=project_id,
        actor_user_id=actor_user_id,
        actor_api_key_id=actor_api_key_id,
        run_id=run_id,
        reason=reason,
    )
    if not rows:
        raise NotFound("Agent not found")
    row = rows[agent_id]
    if not row.moved:
        raise InvalidTransition(f"Cannot change status from {row.status} to {to.value}")
    return Moved(agent_id, row.name, AgentStatus(row.status))


async def transition_project(
    session: AsyncSession,
    project_id: uuid.UUID,
    to: AgentStatus,
    *,
    actor_user_id: uuid.UUID | None = None,
    actor_api_key_id: uuid.UUID | None = None,
    reason: str | None = None,
    **values: Any,
) -> list[uuid.UUID]:
    """Move every agent of the project that may enter `to` (one statement); their ids."""
    scope = "project_id = :project_id AND status IN ({})".format(
        ", ".join(f"'{s.value}'" for s in sorted(sources(to)))
    )
    rows = await _execute(
        session,
        to,
        scope,
        None,
        values,
        project_id=project_id,
        actor_user_id=actor_user_id,
        actor_api_key_id=actor_api_key_id,
        run_id=None,
        reason=reason,
    )
    return [agent_id for agent_id, row in rows.items() if row.moved]


async def _execute(
    session: AsyncSession,
    to: AgentStatus,
    scope: str,
    only_from: Iterable[AgentStatus] | None,
    values: dict[str, Any],
    **params: Any,
) -> dict[uuid.UUID, Any]:
    """transition_ctes through the session: agent id -> its row (status before, moved, name)."""
    sources_ = None if only_from is None else frozenset(only_from)
    stmt = _statement(to, scope, sources_, tuple(sorted(values)))
    bound = {**params, "now": utcnow(), **{f"v_{k}": v for k, v in values.items()}}
    result = await session.execute(stmt, bound)
    return {row.id: row for row in result}


@lru_cache(maxsize=256)
def _statement(
    to: AgentStatus, scope: str, only_from: frozenset[AgentStatus] | None, columns: tuple[str, ...]
) -> TextClause:
    ctes = transition_ctes(
        to,
        agents=f"SELECT id FROM agents WHERE {scope}",
        only_from=only_from,
        values={column: f":v_{column}" for column in columns},
        run_id=":run_id",
        reason=":reason",
        actor_user_id=":actor_user_id",
        actor_api_key_id=":actor_api_key_id",
        now=":now",
    )
    sql = f"""WITH {ctes}
SELECT o.id, o.status, coalesce(m.moved, false) AS moved, m.name
FROM agent_old o LEFT JOIN agent_moved m ON m.id = o.id"""
    table = Agent.__table__.c
    ids = ("agent_id", "project_id", "run_id", "actor_user_id", "actor_api_key_id")
    return text(sql).bindparams(
        *(bindparam(name, type_=UUID(as_uuid=True)) for name in ids if f":{name}" in sql),
        bindparam("now", type_=table.updated_at.type),
        *(bindparam(f"v_{column}", type_=table[column].type) for column in columns),
    )

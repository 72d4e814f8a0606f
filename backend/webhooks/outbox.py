"""The transactional outbox: the one writer of webhook events.

Invariant (DESIGN.md 9): every committed change that has an event type has exactly one event
row, written by the change's own statement (`ctes`, embedded in the state machines' transition
CTEs and the conclusions' accounting) or in its transaction (`record`, for creations); a
rolled-back change leaves none. Events are written only for projects with an enabled endpoint
subscribed to the type (so a project without webhooks pays one index probe), and fanned out
at once into one pending delivery per such endpoint.

Events hold row snapshots (`to_jsonb` of the row written); `render` turns them into the
objects `GET` returns with the serializer each domain registered — the shape is written once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class EventType(StrEnum):
    agent_status_changed = "agent.status_changed"
    run_status_changed = "run.status_changed"
    run_requires_action = "run.requires_action"
    budget_exhausted = "budget.exhausted"
    webhook_test = "webhook.test"


SUBSCRIBABLE = tuple(t.value for t in EventType if t is not EventType.webhook_test)

# Snapshot kind ("agent", "run") -> the domain's serializer of a snapshot.
_RENDERERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register(kind: str, render_snapshot: Callable[[dict[str, Any]], Any]) -> None:
    """A domain names the serializer of its snapshots (the one its API responses use)."""
    _RENDERERS[kind] = render_snapshot


def render(payload: dict[str, Any]) -> dict[str, Any]:
    """An event's `data`: its snapshots rendered as the API renders the objects."""
    return {k: _RENDERERS[k](v) if k in _RENDERERS else v for k, v in payload.items()}


def _subscribed(project: str, event_type: str) -> str:
    return f"""SELECT FROM webhook_endpoints w
        WHERE w.project_id = {project} AND w.enabled
            AND (w.events ? {event_type} OR w.events ? '*')"""


def ctes(name: str, event_type: EventType, source: str) -> str:
    """CTEs `{name}_events` and `{name}_deliveries` of a caller's statement: an event of
    `event_type` per row of `source` (SQL selecting project_id, ordering_key, payload jsonb,
    created_at, and optionally dedupe_key) whose project subscribes to it, and its deliveries.
    An event whose dedupe_key exists already is not written (nor delivered) again."""
    kind = f"'{event_type.value}'"
    return f"""
{name}_src AS (
    SELECT s.* FROM ({source}) s WHERE EXISTS ({_subscribed("s.project_id", kind)})
),
{name}_events AS (
    INSERT INTO webhook_events (id, project_id, type, ordering_key, payload, dedupe_key,
        created_at)
    SELECT gen_random_uuid(), s.project_id, {kind}, s.ordering_key, s.payload,
        {"s.dedupe_key" if "dedupe_key" in source else "NULL"}, s.created_at
    FROM {name}_src s
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id, project_id, ordering_key, seq, created_at
),
{name}_deliveries AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering_key, seq, status,
        attempts, next_attempt_at, created_at)
    SELECT gen_random_uuid(), e.id, w.id, e.ordering_key, e.seq, 'pending', 0, e.created_at,
        e.created_at
    FROM {name}_events e JOIN webhook_endpoints w ON w.project_id = e.project_id AND w.enabled
        AND (w.events ? {kind} OR w.events ? '*')
)"""


_RECORDS: dict[tuple[EventType, str], Any] = {}


async def record(session: AsyncSession, event_type: EventType, source: str, **params: Any) -> None:
    """`ctes` for a creation, in the caller's transaction (`source` may read `params`)."""
    stmt = _RECORDS.get((event_type, source))
    if stmt is None:
        stmt = _RECORDS[(event_type, source)] = text(
            f"WITH {ctes('ev', event_type, source)} SELECT count(*) FROM ev_events"
        )
    await session.execute(stmt, params)


async def record_one(
    session: AsyncSession,
    event_type: EventType,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    payload: dict[str, Any],
) -> uuid.UUID:
    """An event for one endpoint whatever it subscribes to (webhook.test); its id."""
    params = {
        "type": event_type.value,
        "project_id": project_id,
        "endpoint_id": endpoint_id,
        "payload": json.dumps(payload),
    }
    return (await session.execute(_ONE, params)).scalar_one()


_ONE = text(
    """WITH e AS (
    INSERT INTO webhook_events (id, project_id, type, ordering_key, payload, created_at)
    VALUES (gen_random_uuid(), :project_id, :type, NULL, CAST(:payload AS jsonb), now())
    RETURNING id, seq, created_at
), d AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering_key, seq, status,
        attempts, next_attempt_at, created_at)
    SELECT gen_random_uuid(), e.id, :endpoint_id, NULL, e.seq, 'pending', 0, e.created_at,
        e.created_at FROM e
)
SELECT id FROM e"""
)

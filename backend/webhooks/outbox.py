"""The transactional outbox: the one writer of webhook events.

Invariant (DESIGN.md 9): every committed change that has an event type has exactly one event
row, written by the change's own statement (`ctes`, embedded in the state machines' transition
CTEs, the conclusions' accounting and the statements of a spawn and of a submit); a
rolled-back change leaves none. Events are written only for projects with an enabled endpoint
subscribed to the type (so a project without webhooks pays one index probe).

That row is all a change writes: the run pipeline's claims and conclusions write four events
per run, so each is one heap row with a `json` payload (built as text: `to_json` costs half of
`to_jsonb`) and two small index entries, no foreign key. The delivery loop fans events out to
their endpoints' deliveries afterwards (backend/webhooks/delivery.py), in its own transactions.

Events hold row snapshots (`to_json` of the row written); `render` turns them into the objects
`GET` returns with the serializer each domain registered — the shape is written once.
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
    """CTE `{name}_events` of a caller's statement: an event of `event_type` per row of
    `source` (SQL selecting project_id, ordering_key, payload json or jsonb, created_at, and
    optionally dedupe_key) whose project subscribes to it. An event whose dedupe_key exists
    already is not written again."""
    kind = f"'{event_type.value}'"
    dedupe = "dedupe_key" in source
    return f"""
{name}_events AS (
    INSERT INTO webhook_events (id, project_id, type, ordering_key, payload, dedupe_key,
        created_at)
    SELECT gen_random_uuid(), s.project_id, {kind}, s.ordering_key, CAST(s.payload AS json),
        {"s.dedupe_key" if dedupe else "NULL"}, s.created_at
    FROM ({source}) s WHERE EXISTS ({_subscribed("s.project_id", kind)})
    {"ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING" if dedupe else ""}
    RETURNING id
)"""


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


# Fanned out at once: its one delivery is written with it.
_ONE = text(
    """WITH e AS (
    INSERT INTO webhook_events (id, project_id, type, ordering_key, payload, created_at,
        fanned_out)
    VALUES (gen_random_uuid(), :project_id, :type, NULL, CAST(:payload AS json), now(), true)
    RETURNING id, seq, created_at
), d AS (
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering_key, seq, status,
        attempts, next_attempt_at, created_at)
    SELECT gen_random_uuid(), e.id, :endpoint_id, NULL, e.seq, 'pending', 0, e.created_at,
        e.created_at FROM e
)
SELECT id FROM e"""
)

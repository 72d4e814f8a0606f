"""A run's steps (API.md "Tools, steps and required actions"), written through one fragment by
the worker's conclusions (backend/runs/pipeline.py) and by the API's answers to a required
action (tool outputs, approvals).

A step row is written when the step ends, with an index the writer chose (`runs.steps` is the
next free one); an approved server tool call is written `running` by the approval and ended by
the worker that executes it. A model step's usage is not stored on it: it is the sum of its
provider calls (provider_calls.step), so a run's usage is the sum over its model steps by
construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from backend.runs.providers.base import Message, ToolCall

# The JSON keys of a step row in the `:steps` parameter (the table's columns but id).
_COLUMNS: dict[str, str] = {
    "run_id": "uuid",
    "index": "int",
    "kind": "text",
    "status": "text",
    "attempt": "int",
    "provider": "text",
    "model": "text",
    "text": "text",
    "tool_calls": "jsonb",
    "tool_call_id": "text",
    "name": "text",
    "arguments": "jsonb",
    "executor": "text",
    "output": "text",
    "is_error": "boolean",
    "approval": "jsonb",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
}
_NAMES = ", ".join(_COLUMNS)
_RECORD = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
# An approved call's `running` row is ended by its result; any other index is written once.
_ENDED = ", ".join(
    f"{name} = excluded.{name}"
    for name in ("status", "attempt", "output", "is_error", "started_at", "finished_at")
)


def insert_ctes(*, when: str) -> str:
    """CTEs `steps_in` (the rows of the JSON array `:steps` whose run `o` of the caller's CTE
    `run_old` satisfies `when`) and `steps_next` (per run written: the index after its last
    row). Pair with STEPS_JOIN and STEPS_SET in the run's update."""
    return f"""
steps_in AS (
    INSERT INTO run_steps AS s (id, {_NAMES})
    SELECT gen_random_uuid(), {", ".join(f"x.{name}" for name in _COLUMNS)}
    FROM run_old o JOIN jsonb_to_recordset(:steps::jsonb) AS x({_RECORD}) ON x.run_id = o.id
    WHERE {when}
    ON CONFLICT (run_id, index) DO UPDATE SET {_ENDED}
    WHERE s.status = 'running'
    RETURNING s.run_id, s.index
),
steps_next AS (SELECT run_id, max(index) + 1 AS next FROM steps_in GROUP BY run_id)"""


STEPS_JOIN = "LEFT JOIN steps_next sn ON sn.run_id = o.id"
STEPS_SET = "steps = greatest(r.steps, coalesce(sn.next, 0))"
STEPS_WRITTEN = "sn.next IS NOT NULL"


def row(run_id: Any, index: int, kind: str, status: str, attempt: int, **values: Any) -> dict:
    """One step row for `:steps` (JSON-ready: ids and times as text); absent columns NULL."""
    data: dict[str, Any] = dict.fromkeys(_COLUMNS)
    data |= {"run_id": str(run_id), "index": index, "kind": kind, "status": status}
    data["attempt"] = attempt
    for name, value in values.items():
        if name not in _COLUMNS:
            raise KeyError(name)
        data[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return data


@dataclass
class Replay:
    """What a run's committed steps say: the messages after its input (each model step's
    answer, then its calls' results in call order), the model steps done, and the last model
    step's calls still without a result (`pending`; `approved`: those approved, by id -> the
    index of their `running` row)."""

    messages: list[Message] = field(default_factory=list)
    model_steps: int = 0
    next_index: int = 0
    pending: list[ToolCall] = field(default_factory=list)
    approved: dict[str, dict[str, Any]] = field(default_factory=dict)


def replay(rows: Iterable[dict[str, Any]]) -> Replay:
    rows = sorted(rows, key=lambda r: r["index"])
    results = {r["tool_call_id"]: r for r in rows if r["kind"] == "tool"}
    out = Replay(next_index=rows[-1]["index"] + 1 if rows else 0)
    for r in rows:
        if r["kind"] != "model" or r["status"] != "succeeded":
            continue
        calls = [
            ToolCall(c["id"], c["name"], c.get("arguments") or {}) for c in r["tool_calls"] or []
        ]
        out.messages.append(Message("assistant", r["text"] or "", tool_calls=tuple(calls)))
        out.model_steps += 1
        out.pending = []
        for call in calls:
            result = results.get(call.id)
            if result is None or result["status"] == "running":
                out.pending.append(call)
                if result is not None:
                    out.approved[call.id] = result
                continue
            out.messages.append(
                Message(
                    "tool",
                    result["output"] or "",
                    tool_call_id=call.id,
                    is_error=bool(result["is_error"]),
                )
            )
    return out


def message_json(message: Message) -> dict[str, Any]:
    """A message as a conversation_messages row (the pipeline's j_messages)."""
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    return {
        "role": message.role,
        "content": message.content,
        "tool_calls": calls or None,
        "tool_call_id": message.tool_call_id,
        "is_error": message.is_error,
    }


def message_of(
    role: str, content: str, tool_calls: Any, tool_call_id: Any, is_error: Any
) -> Message:
    """A conversation_messages row as a provider message."""
    calls = tuple(ToolCall(c["id"], c["name"], c.get("arguments") or {}) for c in tool_calls or [])
    return Message(
        role, content, tool_calls=calls, tool_call_id=tool_call_id, is_error=bool(is_error)
    )

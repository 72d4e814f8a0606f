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

from typing import Any

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

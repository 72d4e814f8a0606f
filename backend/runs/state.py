"""The run state machine: the only writer of `runs.status`.

    queued  -> running (a worker's claim), cancelled
    running -> queued (retry, or recovery after a lost worker), requires_action (a client tool
               or an approval is needed), succeeded, failed, cancelled, timed_out
    requires_action -> queued (answered), cancelled, failed (expired)
    succeeded, failed, cancelled, timed_out: final

A transition is one conditional UPDATE (the rows locked, their status guarded by the allowed
sources, plus any caller guard such as "this worker's attempt" or "the agent's oldest queued
run") returning the rows it wrote with their previous status. No read-then-write: of two
racing transitions from one status exactly one wins, whoever asks. Side effects (usage,
agent status, events, jobs) belong to the callers. One implementation, `transition_ctes`,
embedded in the statements of backend/runs/pipeline.py: a worker's claim and every kind of
conclusion (success, failure, timeout, retry, release, cancel, reaping), which the worker
runs on its own connections and the API and the recovery crons through their session.
"""

from __future__ import annotations

from collections.abc import Iterable

from backend.runs.models import RunStatus
from backend.runs.schemas import RunRow, run_json
from backend.webhooks import outbox

S = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.queued: frozenset({S.running, S.cancelled}),
    S.running: frozenset(
        {S.queued, S.requires_action, S.succeeded, S.failed, S.cancelled, S.timed_out}
    ),
    S.requires_action: frozenset({S.queued, S.cancelled, S.failed}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
    S.timed_out: frozenset(),
}


outbox.register("run", lambda snapshot: run_json(RunRow(snapshot)))


def event_source(rows: str, *, where: str, from_status: str, now: str) -> str:
    """The run.status_changed outbox source for runs `rn` read from `rows` (the row as written;
    json built as text, see outbox: the renderer ignores the statement's extra columns)."""
    return f"""
SELECT rn.project_id, rn.id AS ordering_key, json_build_object(
        'run', to_json(rn), 'from_status', {from_status}, 'to_status', rn.status
    ) AS payload, {now} AS created_at
FROM {rows} rn WHERE {where}"""


def sources(to: RunStatus) -> frozenset[RunStatus]:
    """The statuses from which `to` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


def is_allowed(frm: RunStatus | str, to: RunStatus | str) -> bool:
    return RunStatus(to) in TRANSITIONS[RunStatus(frm)]


def transition_ctes(
    to: RunStatus,
    *,
    only_from: Iterable[RunStatus] | None = None,
    guard: str = "true",
    values: dict[str, str] | None = None,
    counters: str = "",
    joins: str = "",
    touch_when: str = "false",
    now: str = "now()",
) -> tuple[str, str]:
    """The same transition as `transition`, for a set of runs, as two CTEs of a caller's
    statement (the worker's fused claims and conclusions, backend/runs/pipeline.py), with the
    caller's CTEs between them. The caller's CTE `job` names the runs (`run_id`) and carries
    per-run inputs (columns prefixed `j_`, so they cannot shadow a run's).

    - `run_old`: the runs (id, project_id, agent_id, status, attempt, worker_id, heartbeat_at,
      seq, and the job's columns), locked FOR UPDATE in id order (the latest committed versions are the
      ones guarded);
    - `run_new`: the rows after the statement (every column), `from_status` and `moved`, and
      the outbox's `run_ev_events` (a run.status_changed event per run moved). A run's status (and
      `values`, column -> SQL) change only when the table allows it from its current status
      and `guard` holds for the old row `o` (evaluated once; it may read `o` and sub-selects);
      `counters` (assignments on `r`) apply whenever the row is written: when it moves or
      `touch_when` holds. `joins` adds the caller's CTEs (JOIN clauses on `o`) for values,
      counters and touch_when.
    """
    allowed = sources(to) if only_from is None else sources(to) & set(only_from)
    listed = ", ".join(f"'{s.value}'" for s in sorted(allowed)) or "NULL"
    sets = [f"status = CASE WHEN o.go THEN '{to.value}' ELSE r.status END"]
    sets += [
        f"{column} = CASE WHEN o.go THEN {sql} ELSE r.{column} END"
        for column, sql in (values or {}).items()
    ]
    sets.append(f"updated_at = {now}")
    if counters:
        sets.append(counters)
    assignments = ",\n        ".join(sets)
    lock = """
run_old AS (
    SELECT r.id, r.project_id, r.agent_id, r.status, r.attempt, r.worker_id, r.heartbeat_at,
        r.seq, j.*
    FROM runs r JOIN job j ON j.run_id = r.id ORDER BY r.id FOR UPDATE OF r
)"""
    change = f"""
run_new AS (
    UPDATE runs r SET
        {assignments}
    FROM (
        SELECT o.*, (o.status IN ({listed}) AND ({guard})) AS go FROM run_old o OFFSET 0
    ) o {joins}
    WHERE r.id = o.id AND (o.go OR ({touch_when}))
    RETURNING r.*, o.status AS from_status, o.go AS moved
),{
        outbox.ctes(
            "run_ev",
            outbox.EventType.run_status_changed,
            event_source("run_new", where="rn.moved", from_status="rn.from_status", now=now),
        )
    }"""
    return lock, change

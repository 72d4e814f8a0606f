"""Issue 10: runs that act. One worker process beside the API (as in the pipeline section), the
`fake` provider at latency 0, and our demo MCP server (backend/tools/demo_server.py) in a
process of its own (`python -m bench.serve mcp-demo <port>`), as a user's MCP server would be:

- throughput: `tool_runs` runs, one agent each, submitted by 32 clients while the worker runs
  (the pipeline section's end-to-end measure, bench/pipelinebench.py `_batch`), of a plain type
  (1 model step) and of a type whose script calls `demo__add` (3 steps: model → MCP tool →
  model), in alternating rounds (3, or BENCH_ROUNDS; each type first in every other round),
  the median of each; runs/s and steps/s from the first submission to the last finish, and
  the CPU each process group spent per run over that span (bench/cpu.py; steadier than
  runs/s on a shared machine): the worker, the API, the MCP server, Postgres (and its
  backends serving the worker's pool);
- resume: `pickups` runs of a type whose script asks for a client tool, one at a time on an
  idle system: submit, wait for `requires_action`, then POST …/tool-outputs. Answer→running is
  the client tool step's `finished_at` (the API's clock when it took the answer, as a run's
  `created_at` is when it took the submission) to the worker's claim that resumed the run (the
  agent's `waiting → working` history row; the first claim's is the run's `started_at`). So it
  is measured as the pipeline section's submit→running, which the same runs also give.

All timings come from the database rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from typing import Any

import psutil
from sqlalchemy import text

from bench import cpu, routes, webhookbench
from bench import pipelinebench as pipe
from bench.harness import Harness
from bench.procs import HOST, Proc, free_port, python_module
from bench.report import table
from bench.world import create_agents, create_fake_type, create_project

ADD = {"name": "demo__add", "arguments": {"a": 1, "b": 2}}
ADD_OUTPUT = "echo: 3"  # the answer of a run whose `add` call succeeded
WORKER_APP = "agentry-worker"  # the application_name of the worker's claims and conclusions
LOOKUP = {
    "name": "lookup",
    "description": "Look something up; the caller answers with POST …/tool-outputs",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


async def run(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": [], "notes": []}
    missing = h.available.missing(routes.SUBMIT_RUN, routes.TOOL_OUTPUTS)
    if missing or not h.available.worker:
        reasons = [f"{m} not implemented" for m in missing]
        if not h.available.worker:
            reasons.append(h.available.worker_error or "worker not implemented")
        out["skipped"].append("skipped: tools — " + "; ".join(reasons))
        return out
    mcp = _mcp_server(h)
    worker = pipe._worker(h)
    out["worker_command"] = " ".join(["python", *worker.args[1:]])
    out["worker_max_jobs"] = h.cfg.worker_max_jobs
    mcp.start()
    try:
        await asyncio.to_thread(mcp.wait_tcp)
        url = f"http://{HOST}:{mcp.port}/mcp"
        server = {"name": "demo", "url": url, "headers": {}, "allowed_tools": None}
        types = {
            "plain": await create_fake_type(h.engine, "bench-plain", {}),
            "mcp": await create_fake_type(
                h.engine,
                "bench-mcp",
                {"script": [{"tool_calls": [ADD]}]},
                mcp_servers=[server | {"require_approval": "never"}],
            ),
        }
        client = await create_fake_type(
            h.engine,
            "bench-client-tool",
            {"script": [{"tool_calls": [{"name": "lookup", "arguments": {}}]}]},
            tools=[LOOKUP],
        )
        api = await h.start_agentry("tools-api")
        try:
            out |= await _measure(h, api, worker, mcp, types, client)
        finally:
            worker.stop(grace=15)
            api.stop()
    finally:
        mcp.stop()
    return out


def _mcp_server(h: Harness) -> Proc:
    """Beside the API, on the core the worker does not have."""
    return Proc(
        name="mcp-demo",
        args=python_module("bench.serve", "mcp-demo", str(port := free_port())),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        log_path=h.out_dir / "logs" / "mcp-demo.log",
        cpus=h.server_cpus(),
        port=port,
    )


async def _measure(
    h: Harness,
    api: Proc,
    worker: Proc,
    mcp: Proc,
    types: dict[str, uuid.UUID],
    client: uuid.UUID,
) -> dict[str, Any]:
    """Rounds of the two types' batches, alternating (this machine's other tenants come and
    go), each type first in every other round; then the resumes."""
    mine = await cpu.own_backends(h.engine)
    async with h.engine.connect() as conn:
        backend = await conn.scalar(text("SELECT pg_backend_pid()"))
        database = await conn.scalar(text("SELECT current_database()"))
    pool: set[int] = set()  # the worker's pool's backends, once it is open
    groups = {
        "worker": cpu.children(lambda: worker.popen),
        "api": cpu.children(lambda: api.popen),
        "mcp": cpu.children(lambda: mcp.popen),
    }
    with contextlib.suppress(psutil.Error):  # a Postgres whose processes we cannot see
        groups["postgres"] = cpu.postgres_backends(backend, database, exclude=mine)
        groups["postgres_worker"] = lambda: [psutil.Process(pid) for pid in pool]
    out: dict[str, Any] = {}
    with cpu.CpuMeter(groups) as meter:
        worker.start()
        for type_id in types.values():  # every pool warm, the MCP session open
            await pipe._warm_up(h, api, worker, type_id)
        pool |= await _worker_backends(h)
        batches: dict[str, list[dict[str, Any]]] = {kind: [] for kind in types}
        for n in range(max(h.cfg.rounds, ROUNDS)):
            # Each type first in turn: a batch costs more as the tables grow (scans, dead
            # index entries), so neither type always gets the larger tables.
            for kind, type_id in list(types.items())[:: -1 if n % 2 else 1]:
                batches[kind].append(await _throughput(h, api, worker, meter, type_id))
        for kind, label in (("plain", "1 step"), ("mcp", "3 steps (model → MCP → model)")):
            out[kind] = _rounds(batches[kind])
            print(f"  {label}: {out[kind]['rounds_runs_per_s']} runs/s", flush=True)
        out["resume"] = await _resume(h, api, worker, client, h.cfg.pickups)
        print(f"  tool-outputs→running idle: p50 {out['resume']['p50_ms']} ms", flush=True)
    return out


ROUNDS = 3


async def _worker_backends(h: Harness) -> set[int]:
    """The backends of the worker's pool: its claims and conclusions."""
    async with h.engine.connect() as conn:
        pids = await conn.scalars(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :app"
            ),
            {"app": WORKER_APP},
        )
        return set(pids)


async def _throughput(
    h: Harness, api: Proc, worker: Proc, meter: cpu.CpuMeter, type_id: uuid.UUID
) -> dict[str, Any]:
    """The pipeline section's end-to-end batch of `tool_runs` runs, with each process
    group's CPU per run from the first submission to the last finish, and the steps."""
    out = await pipe._batch(h, api, worker, type_id, h.cfg.tool_runs, "e2e")
    async with h.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT min(r.created_at) AS first, max(r.finished_at) AS last,"
                    " count(*) AS n, coalesce(sum(r.steps), 0) AS steps,"
                    " count(*) FILTER (WHERE r.output = :ok) AS answered,"
                    " (SELECT count(*) FROM run_steps s JOIN runs x ON x.id = s.run_id"
                    "  WHERE x.project_id = :p AND s.kind = 'tool' AND s.is_error) AS tool_errors"
                    " FROM runs r WHERE r.project_id = :p"
                ),
                {"p": out["project_id"], "ok": ADD_OUTPUT},
            )
        ).one()
    used = meter.used(row.first.timestamp(), row.last.timestamp())
    out["cpu_ms_per_run"] = {k: round(v * 1000 / row.n, 3) for k, v in used.items()}
    out["steps"] = row.steps
    out["steps_per_s"] = pipe._r(out["runs_per_s"] and out["runs_per_s"] * row.steps / row.n)
    # A failed MCP call is an error result; `answered`: runs whose answer has the server's sum.
    out["tool_errors"], out["answered"] = row.tool_errors, row.answered
    return out


def _rounds(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median runs/s with the median CPU per run (webhookbench's rule), and
    what went wrong in any round."""
    out = webhookbench._median(batches)
    statuses: Counter[str] = Counter()
    for b in batches:
        statuses.update(b["statuses"])
    out["all_rounds"] = {
        "runs": sum(b["runs"] for b in batches),
        "statuses": dict(statuses),
        "tool_errors": sum(b["tool_errors"] for b in batches),
        "answered": sum(b["answered"] for b in batches),
    }
    return out


async def _resume(
    h: Harness, api: Proc, worker: Proc, type_id: uuid.UUID, count: int
) -> dict[str, Any]:
    project = await create_project(h.engine, h.owner, "bench-resume")
    agents = await create_agents(h.engine, project, type_id, count, "resume")
    for n, agent in enumerate(agents, start=1):
        run_id = await pipe._submit(h, api, agent, project)
        action = await _wait_action(h, worker, run_id)
        await asyncio.sleep(0.05)  # idle before the answer
        outputs = [{"tool_call_id": c["id"], "output": "42"} for c in action["tool_calls"]]
        response = await h.call(
            api,
            "POST",
            f"/api/v1/projects/{project}/runs/{run_id}/tool-outputs",
            {"tool_outputs": outputs},
        )
        if response.status_code != 200:
            raise RuntimeError(f"tool-outputs answered {response.status_code}: {response.text[:300]}")  # fmt: skip
        if await pipe._wait_finished(h, worker, project, n, timeout=30) < n:
            raise RuntimeError(f"resumed run {n} did not finish within 30 s")
        await asyncio.sleep(0.05)  # idle between samples
    rows = await _resume_rows(h, project)
    ran = [r for r in rows if r["answered_at"] and r["resumed_at"]]
    waits = [(r["resumed_at"] - r["answered_at"]).total_seconds() * 1000 for r in ran]
    pickups = [(r["started_at"] - r["created_at"]).total_seconds() * 1000 for r in rows]
    return {
        "runs": len(rows),
        "resumed": len(ran),
        **pipe._stats(waits),
        "statuses": pipe._statuses(rows),
        "submit_p50_ms": pipe._r(pipe._pct(pickups, 50)),
        "submit_p99_ms": pipe._r(pipe._pct(pickups, 99)),
    }


async def _wait_action(
    h: Harness, worker: Proc, run_id: str, timeout: float = 30
) -> dict[str, Any]:
    """Poll the run's row until it waits for an action; its `required_action`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check_alive()
        async with h.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT status, required_action FROM runs WHERE id = :r"), {"r": run_id}
                )
            ).one()
        if row.status == "requires_action":
            return dict(row.required_action)
        if row.status in pipe.FINISHED:
            raise RuntimeError(f"run {run_id} ended {row.status} without asking for its tool")
        await asyncio.sleep(0.02)
    raise RuntimeError(f"run {run_id} did not ask for its tool within {timeout:g} s")


async def _resume_rows(h: Harness, project: uuid.UUID) -> list[Any]:
    """Each run's submission and first claim, its answer (the client tool step's end) and the
    claim that resumed it (the agent's waiting → working row for the run)."""
    async with h.engine.connect() as conn:
        result = await conn.execute(
            text(
                """
SELECT r.status, r.created_at, r.started_at,
    (SELECT s.finished_at FROM run_steps s
        WHERE s.run_id = r.id AND s.kind = 'tool' AND s.executor = 'client'
        ORDER BY s.index LIMIT 1) AS answered_at,
    (SELECT e.created_at FROM agent_events e
        WHERE e.run_id = r.id AND e.from_status = 'waiting' AND e.to_status = 'working'
        ORDER BY e.seq LIMIT 1) AS resumed_at
FROM runs r WHERE r.project_id = :p ORDER BY r.seq"""
            ),
            {"p": project},
        )
        return [row._mapping for row in result]


def render(section: dict[str, Any]) -> str:
    if "mcp" not in section:
        return ""
    plain, mcp = section["plain"], section["mcp"]
    ratio = mcp["runs_per_s"] / plain["runs_per_s"] if plain["runs_per_s"] else None
    cpu_ratio = _cpu_total(mcp) / _cpu_total(plain) if _cpu_total(plain) else None
    rows = [
        _throughput_row("1 step: model", plain),
        _throughput_row("3 steps: model → MCP demo__add → model", mcp),
        ["  3 steps ÷ 1 step", "", f"{_x(ratio)} runs/s, {_x(cpu_ratio)} CPU per run"],
    ]
    for name, b in (("1-step", plain), ("3-step", mcp)):
        c = b["cpu_ms_per_run"]
        shown = " / ".join(f"{c.get(n, 0):.2f}" for n in ("worker", "api", "mcp", "postgres"))
        shown += f" (worker's pool {c.get('postgres_worker', 0):.2f})"
        rows.append([f"  {name} CPU ms per run", "worker / API / MCP server / Postgres", shown])
        rows += _problems(name, b["all_rounds"])
    if r := section.get("resume"):
        rows += [
            ["tool-outputs→running, idle", f"{r['resumed']}/{r['runs']} sequential runs", f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms"],
            ["  submit→running, same runs", "", f"p50 {r['submit_p50_ms']} ms, p99 {r['submit_p99_ms']} ms"],
        ]  # fmt: skip
        if r["statuses"] != {"succeeded": r["runs"]}:
            rows.append(["  ! statuses", "", _counts(r["statuses"])])
    head = (
        f"one worker process: {section.get('worker_command')} "
        f"(WORKER_MAX_JOBS={section.get('worker_max_jobs')}), the demo MCP server in its own "
        "process; end to end = 32 clients submitting while the worker runs; median of "
        "alternating rounds; runs' timestamps"
    )
    return head + "\n" + table(["measure", "", "result"], rows, left=3)


def _throughput_row(label: str, b: dict[str, Any]) -> list[Any]:
    per_round = ", ".join(str(x) for x in b["rounds_runs_per_s"])
    return [
        label,
        f"{b['runs']} runs a round: {per_round} runs/s",
        f"{b['runs_per_s']} runs/s, {b['steps_per_s']} steps/s",
    ]


def _cpu_total(b: dict[str, Any]) -> float:
    return sum(v for k, v in b["cpu_ms_per_run"].items() if k != "postgres_worker")


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _problems(name: str, rounds: dict[str, Any]) -> list[list[Any]]:
    """Runs that did not succeed, or whose MCP call failed, in any round: shown, never hidden."""
    rows = []
    if rounds["statuses"] != {"succeeded": rounds["runs"]}:
        rows.append([f"  ! {name} statuses", "", _counts(rounds["statuses"])])
    if rounds["tool_errors"]:
        rows.append([f"  ! {name} MCP calls that failed", "", str(rounds["tool_errors"])])
    return rows


def _counts(statuses: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))

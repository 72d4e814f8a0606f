"""Issue 10: runs that act. One worker process beside the API (as in the pipeline section), the
`fake` provider at latency 0, and our demo MCP server (backend/tools/demo_server.py) in a
process of its own (`python -m bench.serve mcp-demo <port>`), as a user's MCP server would be:

- throughput: `tool_runs` runs, one agent each, submitted by 32 clients while the worker runs
  (the pipeline section's end-to-end measure, bench/pipelinebench.py `_batch`), first of a plain
  type (1 model step), then of a type whose script calls `demo__add` (3 steps: model → MCP tool
  → model); runs/s and steps/s from the first submission to the last finish, and the CPU each
  process spent per run (steadier than runs/s on a shared machine);
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
from typing import Any

import psutil
from sqlalchemy import text

from bench import pipelinebench as pipe
from bench import routes
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
    cfg = h.cfg
    mcp = _mcp_server(h)
    worker = pipe._worker(h)
    out["worker_command"] = " ".join(["python", *worker.args[1:]])
    out["worker_max_jobs"] = cfg.worker_max_jobs
    mcp.start()
    try:
        await asyncio.to_thread(mcp.wait_tcp)
        url = f"http://{HOST}:{mcp.port}/mcp"
        plain = await create_fake_type(h.engine, "bench-plain", {})
        server: dict[str, Any] = {"name": "demo", "url": url, "headers": {}, "allowed_tools": None}
        acting = await create_fake_type(
            h.engine,
            "bench-mcp",
            {"script": [{"tool_calls": [ADD]}]},
            mcp_servers=[server | {"require_approval": "never"}],
        )
        client = await create_fake_type(
            h.engine,
            "bench-client-tool",
            {"script": [{"tool_calls": [{"name": "lookup", "arguments": {}}]}]},
            tools=[LOOKUP],
        )
        api = await h.start_agentry("tools-api")
        try:
            worker.start()
            for type_id in (plain, acting):  # every pool warm, the MCP session open
                await pipe._warm_up(h, api, worker, type_id)
            procs = {"worker": worker, "api": api, "mcp": mcp}
            out["plain"] = await _throughput(h, api, worker, procs, plain, cfg.tool_runs, "plain")
            _progress("1 step (model)", out["plain"])
            out["mcp"] = await _throughput(h, api, worker, procs, acting, cfg.tool_runs, "mcp")
            _progress("3 steps (model → MCP → model)", out["mcp"])
            out["resume"] = await _resume(h, api, worker, client, cfg.pickups)
            print(f"  tool-outputs→running idle: p50 {out['resume']['p50_ms']} ms", flush=True)
        finally:
            worker.stop(grace=15)
            api.stop()
    finally:
        mcp.stop()
    return out


def _progress(what: str, b: dict[str, Any]) -> None:
    print(f"  {what}: {b['runs_per_s']} runs/s, {b['steps_per_s']} steps/s", flush=True)


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


async def _throughput(
    h: Harness,
    api: Proc,
    worker: Proc,
    procs: dict[str, Proc],
    type_id: uuid.UUID,
    count: int,
    kind: str,
) -> dict[str, Any]:
    """The pipeline section's end-to-end batch, with each process's CPU per run, and steps."""
    before = {name: _cpu(p) for name, p in procs.items()}
    db_before = await _db_cpu(h)
    out = await pipe._batch(h, api, worker, type_id, count, "e2e")
    after = {name: _cpu(p) for name, p in procs.items()}
    db_after = await _db_cpu(h)
    finished = out["finished"] or 1
    spent = {name: after[name] - before[name] for name in procs}
    if db_after is not None and db_before is not None:
        used = [(t - db_before.get(pid, (0.0, ""))[0], app) for pid, (t, app) in db_after.items()]
        spent["postgres"] = sum(t for t, _ in used)
        spent["postgres_worker"] = sum(t for t, app in used if app == WORKER_APP)
    out["cpu_ms_per_run"] = {name: pipe._r(t * 1000 / finished) for name, t in spent.items()}
    async with h.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(r.steps), 0) AS steps,"
                    " count(*) FILTER (WHERE r.output = :ok) AS answered,"
                    " (SELECT count(*) FROM run_steps s JOIN runs x ON x.id = s.run_id"
                    "  WHERE x.project_id = :p AND s.kind = 'tool' AND s.is_error) AS tool_errors"
                    " FROM runs r WHERE r.project_id = :p"
                ),
                {"p": out["project_id"], "ok": ADD_OUTPUT},
            )
        ).one()
    out["steps"] = row.steps
    out["steps_per_s"] = pipe._r(out["runs_per_s"] and out["runs_per_s"] * row.steps / finished)
    if kind == "mcp":
        out["tool_errors"] = row.tool_errors  # an MCP call that failed is an error result
        out["answered"] = row.answered  # runs whose answer carries the tool's output
    return out


def _cpu(proc: Proc) -> float:
    times = psutil.Process(proc.popen.pid).cpu_times()  # type: ignore[union-attr]
    return float(times.user + times.system)


async def _db_cpu(h: Harness) -> dict[int, tuple[float, str]] | None:
    """CPU so far and application_name of each Postgres backend serving the bench database
    (the API's and the worker's pools), by pid; None unless Postgres is the embedded one (its
    pids are ours)."""
    if not h.services.embedded:
        return None
    async with h.engine.connect() as conn:
        backends = await conn.execute(
            text(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        spent = {}
        for pid, app in backends:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                spent[pid] = (float(times.user + times.system), app)
    return spent


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
    rows = [
        _throughput_row("1 step: model", plain),
        _throughput_row("3 steps: model → MCP demo__add → model", mcp),
        ["  3-step runs/s ÷ 1-step runs/s", "", "—" if ratio is None else f"{ratio:.2f}×"],
    ]
    for name, b in (("1-step", plain), ("3-step", mcp)):
        cpu = b["cpu_ms_per_run"]
        names = ["worker", "api", "mcp", "postgres"]
        shown = " / ".join(str(cpu.get(n, "—")) for n in names)
        if "postgres_worker" in cpu:
            shown += f" (the worker's statements {cpu['postgres_worker']})"
        rows.append([f"  {name} CPU ms per run", "worker / API / MCP server / Postgres", shown])
        rows += _problems(name, b)
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
        "process; end to end = 32 clients submitting while the worker runs; runs' timestamps"
    )
    return head + "\n" + table(["measure", "", "result"], rows, left=3)


def _throughput_row(label: str, b: dict[str, Any]) -> list[Any]:
    return [
        label,
        f"{b['finished']}/{b['runs']} runs in {b['span_s']} s",
        f"{b['runs_per_s']} runs/s, {b['steps_per_s']} steps/s",
    ]


def _problems(name: str, b: dict[str, Any]) -> list[list[Any]]:
    """Runs that did not succeed, or whose MCP call failed, are shown, never hidden."""
    rows = []
    if b["statuses"] != {"succeeded": b["runs"]}:
        rows.append([f"  ! {name} statuses", "", _counts(b["statuses"])])
    if b.get("tool_errors"):
        rows.append([f"  ! {name} MCP calls that failed", "", str(b["tool_errors"])])
    return rows


def _counts(statuses: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))

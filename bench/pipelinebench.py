"""Issue 4: the run pipeline end to end with ONE worker process beside the API.

- pickup: sequential single submissions on an idle system; submit→running from the rows'
  `started_at - created_at`.
- throughput: `pipeline_runs` runs of the fake provider at latency_ms=0, one per agent (an
  agent runs one run at a time), submitted by 32 clients while the worker runs; runs/s from
  the first submission to the last finish.
- slow: `slow_agents` agents each given one run of latency_ms=1000: makespan against the ideal
  for WORKER_MAX_JOBS, and the effective (peak and mean) concurrency from the rows' intervals.

All timings come from the database rows, not from the client.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from bench import loadgen, routes
from bench.config import agentry_env
from bench.harness import Harness
from bench.procs import HOST, Proc, python_module
from bench.report import table
from bench.world import create_agents, create_fake_type, create_project

FINISHED = ("succeeded", "failed", "cancelled", "timed_out")


async def run(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": [], "notes": []}
    missing = h.available.missing(routes.SUBMIT_RUN)
    if missing or not h.available.worker:
        reasons = [f"{m} not implemented" for m in missing]
        if not h.available.worker:
            reasons.append(h.available.worker_error or "worker not implemented")
        out["skipped"].append("skipped: run pipeline — " + "; ".join(reasons))
        return out
    cfg = h.cfg
    fast = await create_fake_type(h.engine, "bench-fast", {"latency_ms": 0})
    slow = await create_fake_type(h.engine, "bench-slow", {"latency_ms": cfg.slow_latency_ms})
    worker = _worker(h)
    out["worker_command"] = " ".join(["python", *worker.args[1:]])
    out["worker_max_jobs"] = cfg.worker_max_jobs
    api = await h.start_agentry("pipeline-api")  # stops itself if it never gets ready
    try:
        worker.start()
        await _warm_up(h, api, worker, fast)
        out["pickup"] = await _pickup(h, api, worker, fast, cfg.pickups)
        _progress("submit→running idle", f"p50 {out['pickup']['p50_ms']} ms")
        out["e2e"] = await _batch(h, api, worker, fast, cfg.pipeline_runs, "e2e")
        _progress("end to end", f"{out['e2e']['runs_per_s']} runs/s")
        # Worker capacity: a backlog submitted through the API while no worker runs, then one
        # worker started. Submission speed (the API's) no longer paces the worker.
        worker.stop(grace=15)
        out["drain"] = await _batch(h, api, worker, fast, cfg.pipeline_runs, "drain")
        _progress("backlog drain", f"{out['drain']['runs_per_s']} runs/s")
        worker.stop(grace=15)
        out["slow"] = await _batch(h, api, worker, slow, cfg.slow_agents, "slow")
    finally:
        worker.stop(grace=15)
        api.stop()
    return out


def _progress(what: str, figure: object) -> None:
    print(f"  {what}: {figure}", flush=True)


def _worker(h: Harness) -> Proc:
    """`agentry worker` (`make worker`): backend.worker.main, arq's worker with the app's
    logging (LOG_LEVEL=WARNING); the arq CLI would add two INFO lines per job. Pinned to the
    core the API does not have."""
    env = agentry_env(
        h.services.database_url, h.services.redis_url, WORKER_MAX_JOBS=h.cfg.worker_max_jobs
    )
    return Proc(
        name="worker",
        args=python_module("backend.cli", "worker"),
        env=env,
        log_path=h.out_dir / "logs" / "worker.log",
        cpus=h.client_cpus(),
    )


async def _submit(h: Harness, api: Proc, agent_id: uuid.UUID, project_id: uuid.UUID) -> str:
    response = await h.call(
        api, "POST", f"/api/v1/projects/{project_id}/agents/{agent_id}/runs", {"input": "bench"}
    )
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
    return response.json()["id"]


async def _wait_finished(
    h: Harness, worker: Proc, project_id: uuid.UUID, count: int, timeout: float
) -> int:
    """Poll the rows until `count` runs of the project are finished; returns how many are."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        worker.check_alive()
        async with h.engine.connect() as conn:
            done = await conn.scalar(
                text("SELECT count(*) FROM runs WHERE project_id = :p AND status = ANY(:s)"),
                {"p": project_id, "s": list(FINISHED)},
            )
        if done >= count:
            return done
        await asyncio.sleep(0.02)
    return done


async def _warm_up(h: Harness, api: Proc, worker: Proc, type_id: uuid.UUID) -> None:
    """One run through the whole pipeline: the worker is up and every pool is warm."""
    project = await create_project(h.engine, h.owner, "bench-warmup")
    (agent,) = await create_agents(h.engine, project, type_id, 1, "warmup")
    await _submit(h, api, agent, project)
    if await _wait_finished(h, worker, project, 1, timeout=60) < 1:
        raise RuntimeError(f"the warm-up run did not finish within 60 s:\n{worker.tail()}")


Prepare = Callable[[uuid.UUID], Awaitable[None]] | None  # called with a new project's id


async def _pickup(
    h: Harness, api: Proc, worker: Proc, type_id: uuid.UUID, count: int, prepare: Prepare = None
) -> dict[str, Any]:
    project = await create_project(h.engine, h.owner, "bench-pickup")
    if prepare is not None:
        await prepare(project)
    agents = await create_agents(h.engine, project, type_id, count, "pickup")
    for n, agent in enumerate(agents, start=1):
        await _submit(h, api, agent, project)
        if await _wait_finished(h, worker, project, n, timeout=30) < n:
            raise RuntimeError(f"pickup run {n} did not finish within 30 s")
        await asyncio.sleep(0.05)  # idle between submissions
    rows = await _rows(h, project)
    pickups = [(r["started_at"] - r["created_at"]).total_seconds() * 1000 for r in rows]
    out = {"runs": len(rows), **_stats(pickups), "statuses": _statuses(rows)}
    return out | {"project_id": project}


async def _batch(
    h: Harness,
    api: Proc,
    worker: Proc,
    type_id: uuid.UUID,
    count: int,
    kind: str,
    prepare: Prepare = None,
) -> dict[str, Any]:
    """`count` agents each given one run, submitted by 32 clients. kind "e2e": the worker runs
    meanwhile; "drain" and "slow": the worker starts once every run is queued."""
    project = await create_project(h.engine, h.owner, f"bench-{kind}")
    if prepare is not None:
        await prepare(project)
    agents = await create_agents(h.engine, project, type_id, count, kind)
    sent = await _submit_all(h, api, project, agents)
    if kind != "e2e":
        worker.start()
    latency = h.cfg.slow_latency_ms / 1000 if kind == "slow" else 0.0
    done = await _wait_finished(h, worker, project, count, timeout=_patience(h, count, latency))
    rows = await _rows(h, project)
    ran = [r for r in rows if r["started_at"] and r["finished_at"]]
    # e2e: first submission → last finish; drain/slow: first start → last finish.
    span = _span(ran, "created_at" if kind == "e2e" else "started_at", "finished_at")
    pickups = [(r["started_at"] - r["created_at"]).total_seconds() * 1000 for r in ran]
    out: dict[str, Any] = {
        "runs": count,
        "finished": done,
        "statuses": _statuses(rows),
        "submit": sent,
        "span_s": _r(span),
        "runs_per_s": _r(done / span if span else None),
        "pickup_p50_ms": _r(_pct(pickups, 50)),
        "pickup_p99_ms": _r(_pct(pickups, 99)),
        "peak_concurrency": _peak(ran),
        "project_id": project,
    }
    if kind == "slow":
        out.update(_slow_figures(h, ran, count, span, done))
    return out


def _patience(h: Harness, count: int, latency: float) -> float:
    """How long to wait for a batch: generous (≥ 10 runs/s, 10× the ideal), never unbounded."""
    waves = math.ceil(count / min(count, h.cfg.worker_max_jobs))
    return 60 + count / 10 + 10 * waves * latency


def _slow_figures(
    h: Harness, ran: list[Any], count: int, span: float | None, done: int
) -> dict[str, Any]:
    latency = h.cfg.slow_latency_ms / 1000
    slots = min(count, h.cfg.worker_max_jobs)
    ideal_span = math.ceil(count / slots) * latency  # whole waves of `slots` runs at once
    busy = sum((r["finished_at"] - r["started_at"]).total_seconds() for r in ran)
    return {
        "latency_ms": h.cfg.slow_latency_ms,
        "worker_max_jobs": h.cfg.worker_max_jobs,
        "ideal_span_s": _r(ideal_span),
        "share_of_ideal": _r(ideal_span / span if span and done >= count else None, 3),
        "ideal_runs_per_s": _r(slots / latency),
        "mean_concurrency": _r(busy / span if span else None),
    }


async def _submit_all(
    h: Harness, api: Proc, project: uuid.UUID, agents: list[uuid.UUID]
) -> dict[str, Any]:
    requests = [
        h.request(api, "POST", f"/api/v1/projects/{project}/agents/{a}/runs", {"input": "bench"})
        for a in agents
    ]
    result = await loadgen.send_all(HOST, api.port, requests, connections=h.cfg.connections)  # type: ignore[arg-type]
    if result.errors:
        raise RuntimeError(f"{result.errors} submissions failed: {result.sample_error}")
    return {
        "seconds": _r(result.seconds),
        "requests_per_s": _r(result.requests / result.seconds if result.seconds else None),
        "p50_ms": _r(result.percentile(50)),
        "p99_ms": _r(result.percentile(99)),
    }


async def _rows(h: Harness, project: uuid.UUID) -> list[Any]:
    async with h.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT status, created_at, started_at, finished_at FROM runs "
                "WHERE project_id = :p ORDER BY seq"
            ),
            {"p": project},
        )
        return [row._mapping for row in result]


def _span(rows: list[Any], first: str, last: str) -> float | None:
    starts = [r[first] for r in rows if r[first]]
    ends = [r[last] for r in rows if r[last]]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _peak(rows: list[Any]) -> int:
    """Most runs `running` at the same moment, from their [started_at, finished_at) intervals."""
    events = sorted(
        [(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows],
        key=lambda e: (e[0], e[1]),  # a finish before a start at the same instant
    )
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def _statuses(rows: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _stats(values_ms: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": _r(_pct(values_ms, 50)),
        "p99_ms": _r(_pct(values_ms, 99)),
        "mean_ms": _r(statistics.fmean(values_ms) if values_ms else None),
        "max_ms": _r(max(values_ms) if values_ms else None),
    }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def render(section: dict[str, Any]) -> str:
    if "pickup" not in section:
        return ""
    p = section["pickup"]
    rows = [
        [
            "submit→running, idle",
            f"{p['runs']} sequential runs",
            f"p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms",
        ]
    ]
    rows += _batch_rows(section.get("e2e"), "latency_ms=0, worker running (end to end)")
    rows += _batch_rows(section.get("drain"), "latency_ms=0, backlog drained by one worker")
    rows += _slow_rows(section.get("slow"))
    head = (
        f"one worker process: {section.get('worker_command')} "
        f"(WORKER_MAX_JOBS={section.get('worker_max_jobs')}); figures from the runs' timestamps"
    )
    return head + "\n" + table(["measure", "", "result"], rows, left=3)


def _batch_rows(b: dict[str, Any] | None, label: str) -> list[list[Any]]:
    if not b:
        return []
    sub = b["submit"]
    rows = [
        [label, f"{b['finished']}/{b['runs']} runs in {b['span_s']} s", f"{b['runs_per_s']} runs/s"],
        ["  submissions (32 clients)", f"{sub['requests_per_s']} req/s", f"p50 {sub['p50_ms']} ms, p99 {sub['p99_ms']} ms"],
    ]  # fmt: skip
    if label.endswith("(end to end)"):
        rows.append(["  submit→running under load", "", f"p50 {b['pickup_p50_ms']} ms, p99 {b['pickup_p99_ms']} ms; peak {b['peak_concurrency']} running"])  # fmt: skip
    return rows + _status_rows(b)


def _slow_rows(s: dict[str, Any] | None) -> list[list[Any]]:
    if not s:
        return []
    share = s["share_of_ideal"]
    ideal = f"min({s['runs']}, WORKER_MAX_JOBS={s['worker_max_jobs']})/{s['latency_ms'] / 1000:g} s"
    return [
        [f"latency_ms={s['latency_ms']}, {s['runs']} agents (backlog)", f"{s['finished']}/{s['runs']} runs in {s['span_s']} s (ideal {s['ideal_span_s']} s)", "did not finish" if share is None else f"{share:.0%} of ideal"],
        ["  throughput", f"{s['runs_per_s']} runs/s", f"ideal {ideal} = {s['ideal_runs_per_s']} runs/s"],
        ["  effective concurrency", f"peak {s['peak_concurrency']}", f"mean {s['mean_concurrency']} over the span"],
    ] + _status_rows(s)  # fmt: skip


def _status_rows(b: dict[str, Any]) -> list[list[Any]]:
    """Runs that did not succeed, or did not finish in time, are shown, never hidden."""
    if b["statuses"] == {"succeeded": b["runs"]}:
        return []
    return [["  ! statuses", "", ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items()))]]

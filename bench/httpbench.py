"""Issue 3: requests/s and p50/p99 at 32 clients for GET agent, list 100 agents, spawn and
run submission, beside the framework ceiling (A: a constant route) and the database ceiling
(B: a raw-asyncpg primary-key read), all served by uvicorn the same way, in one run.

Every server is up for the whole section and the cases run in BENCH_ROUNDS interleaved rounds
(each case gets BENCH_SECONDS / rounds per round, after its own warm-up), so a burst of load
from elsewhere on a shared machine hits every case alike instead of skewing one ratio.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from bench import loadgen, routes
from bench.harness import Harness
from bench.procs import Proc
from bench.world import create_agents, create_fake_type, create_project

REFERENCE_POOL = 20  # DB_POOL_SIZE's default: reference B gets the pool size Agentry gets
Spec = tuple[str, str, Any]  # method, path, JSON body


@dataclass
class Case:
    name: str
    proc: Proc
    specs: list[Spec]
    route: tuple[str, str] | None = None  # None: a reference, always there
    expect: int = 200
    auth: bool = True


async def run(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": {}, "skipped": [], "rounds": h.cfg.rounds}
    type_id = await create_fake_type(h.engine, "bench-echo", {"latency_ms": 0})
    read_project = await create_project(h.engine, h.owner, "bench-read")
    read_agents = await create_agents(h.engine, read_project, type_id, 100, "read")
    spawn_project = await create_project(h.engine, h.owner, "bench-spawn")
    submit_project = await create_project(h.engine, h.owner, "bench-submit")
    submit_agents = await create_agents(h.engine, submit_project, type_id, 1000, "submit")
    procs: list[Proc] = []
    try:
        cases = await _reference_cases(h, procs, read_agents)
        if h.available.app_error:
            out["skipped"].append(f"all Agentry routes: the app does not build: {h.available.app_error}")  # fmt: skip
        else:
            agentry = await h.start_agentry("agentry")
            procs.append(agentry)
            no_rl = await h.start_agentry("agentry-no-ratelimit", RATE_LIMIT_ENABLED="false")
            procs.append(no_rl)
            base = f"/api/v1/projects/{read_project}"
            get_agent: Spec = ("GET", f"{base}/agents/{read_agents[0]}", None)
            spawn = {"agent_type_id": str(type_id), "name": "bench-spawned"}
            cases += [
                Case("Agentry GET /health (no auth, no DB)", agentry, [("GET", "/health", None)], ("GET", "/health"), auth=False),
                Case("GET project (core: auth + 1 row)", agentry, [("GET", f"/api/v1/projects/{read_project}", None)], ("GET", routes.P)),
                Case("GET agent", agentry, [get_agent], routes.GET_AGENT),
                Case("GET agent, rate limit off", no_rl, [get_agent], routes.GET_AGENT),
                Case("GET list 100 agents", agentry, [("GET", f"{base}/agents?limit=100", None)], routes.LIST_AGENTS),
                Case("POST spawn agent", agentry, [("POST", f"/api/v1/projects/{spawn_project}/agents", spawn)], routes.SPAWN, 201),
                Case(
                    "POST submit run", agentry,
                    [("POST", f"/api/v1/projects/{submit_project}/agents/{a}/runs", {"input": "hello"}) for a in submit_agents],
                    routes.SUBMIT_RUN, 202,
                ),
            ]  # fmt: skip
        runnable = [c for c in cases if await _ready(h, out, c)]
        await _measure(h, out, runnable)
    finally:
        for proc in procs:
            proc.stop()
        await _forget_submitted_runs(h, submit_project)
    return out


async def _reference_cases(h: Harness, procs: list[Proc], agent_ids: list[Any]) -> list[Case]:
    raw = await h.start_server("raw", "raw", ready="/")
    procs.append(raw)
    const = await h.start_server("ref-constant", "constant", ready="/constant")
    procs.append(const)
    env = {
        **os.environ,
        "BENCH_PK_DSN": h.services.asyncpg_dsn,
        "BENCH_PK_POOL": str(REFERENCE_POOL),
    }
    pk = await h.start_server("ref-pkread", "pkread", env=env, ready=f"/agents/{agent_ids[0]}")
    procs.append(pk)
    return [
        Case("loadgen ceiling (raw uvloop server)", raw, [("GET", "/", None)], auth=False),
        Case("A: FastAPI constant", const, [("GET", "/constant", None)], auth=False),
        Case("B: FastAPI + asyncpg PK read", pk, [("GET", f"/agents/{a}", None) for a in agent_ids], auth=False),
    ]  # fmt: skip


async def _ready(h: Harness, out: dict[str, Any], case: Case) -> bool:
    """The route exists and a first request answers as expected: else say so, never measure."""
    if case.route is not None and not h.available.has(case.route):
        out["skipped"].append(f"skipped: {case.name} — {case.route[0]} {case.route[1]} not implemented")  # fmt: skip
        return False
    if case.route is None:
        return True
    method, path, body = case.specs[0]
    probe = await h.call(case.proc, method, path, body)
    if probe.status_code != case.expect:
        out["skipped"].append(
            f"failed: {case.name} — probe answered {probe.status_code}, expected {case.expect}: "
            f"{probe.text[:300]}"
        )
        return False
    return True


async def _measure(h: Harness, out: dict[str, Any], cases: list[Case]) -> None:
    totals: dict[str, loadgen.Result] = {}
    share = h.cfg.seconds / h.cfg.rounds
    for round_no in range(h.cfg.rounds):
        for case in cases:
            result = await h.load(case.proc, _requests(h, case), seconds=share)
            totals[case.name] = totals[case.name].merge(result) if round_no else result
    for case in cases:
        out["rows"][case.name] = totals[case.name].summary()
    pair = [c for c in cases if c.name in ("GET agent", "GET agent, rate limit off")]
    if len(pair) == 2:
        out["rate_limit_cost"] = await _rate_limit_cost(h, *pair)
        cost = out["rate_limit_cost"]
        out.setdefault("notes", []).append(
            f"rate limiting's cost on GET agent, {cost['pairs']} alternating 1.5 s pairs: median "
            f"{cost['median']:.1%} of req/s (pairs from {cost['min']:.1%} to {cost['max']:.1%}); "
            f"server CPU per request {cost['server_cpu']:+.1%}"
        )


def _requests(h: Harness, case: Case) -> list[bytes]:
    return [h.request(case.proc, *spec, auth=case.auth) for spec in case.specs]


async def _rate_limit_cost(h: Harness, on: Case, off: Case, pairs: int = 6) -> dict[str, Any]:
    """A ≤ 10 % effect needs a paired design on a shared machine: alternate short runs of the
    two servers (order swapped every pair, against drift) and take the median of the pairs."""
    costs, cpu = [], {on.name: 0.0, off.name: 0.0}
    served = {on.name: 0, off.name: 0}
    for i in range(pairs):
        results = {}
        for case in (on, off) if i % 2 == 0 else (off, on):
            results[case.name] = await h.load(
                case.proc, _requests(h, case), seconds=1.5, warmup=0.5
            )
            cpu[case.name] += results[case.name].server_cpu_s or 0.0
            served[case.name] += results[case.name].all_responses
        costs.append(1 - results[on.name].rps / results[off.name].rps)
    per_request = {name: cpu[name] / served[name] for name in cpu if served[name]}
    return {
        "pairs": pairs,
        "median": round(statistics.median(costs), 4),
        "min": round(min(costs), 4),
        "max": round(max(costs), 4),
        "server_cpu": round(per_request[on.name] / per_request[off.name] - 1, 4),
    }


async def _forget_submitted_runs(h: Harness, project_id: Any) -> None:
    """Submission left queued runs and their jobs: remove both before a worker ever starts."""
    async with h.engine.begin() as conn:
        await conn.execute(text("DELETE FROM runs WHERE project_id = :p"), {"p": project_id})
    await h.flush_redis()

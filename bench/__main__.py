"""`make bench` (`python -m bench`): Agentry's performance figures (DESIGN.md "Performance
targets") beside two reference apps, in one run; results also in .bench/results.json.

Sections (BENCH_SECTIONS, default "http,pipeline,usershape,metrics,webhooks,tools"):
- http: req/s, p50/p99 and server CPU per request at 32 connections for GET agent, list of
  100 agents, spawn, run submission, GET agent with rate limiting off; (A) a FastAPI constant
  route and (B) a FastAPI raw-asyncpg primary-key read, all served by uvicorn like `make run`.
- pipeline: one worker process: idle submit→running, runs/s at latency_ms=0 (worker running;
  and a backlog drained), 500 one-second runs against the ideal for WORKER_MAX_JOBS.
- usershape: `agentry dev` (API + worker in one process) over HTTP only, the peers' load
  script: runs/s end to end, pickup, effective concurrency of one-second runs (bench/usershape.py).
- metrics: GET /projects/{p}/metrics with 10⁴, 10⁵, 10⁶ seeded runs.
- webhooks: what the webhook outbox and deliveries cost the pipeline (bench/webhookbench.py).
- tools: one worker process and the demo MCP server in its own: runs/s and steps/s end to end
  of 3-step runs (model → MCP tool → model) beside 1-step runs, CPU per run; idle
  tool-outputs→running of runs waiting for a client tool (bench/toolbench.py).

Environment (all optional): BENCH_SECONDS (5), BENCH_WARMUP (1), BENCH_CONNECTIONS (32),
BENCH_ROUNDS (2: the http cases run interleaved, BENCH_SECONDS split over the rounds),
BENCH_PIN (1: servers on CPU 0, load generator on CPU 1), BENCH_PIPELINE_RUNS (1000),
BENCH_PICKUPS (50), BENCH_SLOW_AGENTS (500), BENCH_SLOW_LATENCY_MS (1000),
BENCH_WORKER_MAX_JOBS (the setting's default), BENCH_USERSHAPE_RUNS (500), BENCH_USERSHAPE_SLOW
(200), BENCH_TOOL_RUNS (500; BENCH_PICKUPS samples the tool-outputs), BENCH_MAX_RUNS (1000000),
BENCH_METRICS_AGENTS (20), BENCH_METRICS_DAYS (7), BENCH_DATABASE_URL + BENCH_REDIS_URL
(use these servers instead of embedded ones; the Redis database is FLUSHed).
Server logs: .bench/logs/.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from bench import loadgen, report
from bench.config import OUT_DIR, RATE_LIMIT_MULTIPLIER, BenchConfig
from bench.harness import Harness
from bench.procs import cpu_count
from bench.routes import discover
from bench.serve import resolved_uvicorn_impl
from bench.services import Services, provide


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def header(results: dict[str, Any], cfg: BenchConfig, services: Services) -> str:
    m, impl = results["machine"], results["uvicorn"]
    pin = (
        "servers pinned to CPU 0, load generator to CPU 1 (Postgres/Redis unpinned)"
        if results["pinning"]
        else "no CPU pinning"
    )
    where = (
        "embedded Postgres + Redis under .bench/services"
        if services.embedded
        else "BENCH_DATABASE_URL / BENCH_REDIS_URL"
    )
    return "\n".join(
        [
            "Agentry bench  " + results["started_at"],
            f"machine: nproc={m['nproc']} ({m['cpu_model']}), Python {m['python']}, {m['platform']}, "
            f"load avg {m['loadavg_at_start']}",
            f"servers: uvicorn, 1 process each, loop={impl['loop']} http={impl['http']}, "
            "log_config=None proxy_headers=True (as `make run`); 127.0.0.1",
            f"load: {cfg.connections} keep-alive HTTP/1.1 connections, {cfg.warmup:g} s warm-up + "
            f"{cfg.seconds:g} s measured (BENCH_SECONDS); {pin}",
            f"agentry: ENVIRONMENT=production, LOG_LEVEL=WARNING (the access-log middleware still "
            f"runs per request; its INFO lines are filtered), RATE_LIMIT_MULTIPLIER={RATE_LIMIT_MULTIPLIER} "
            "(limits never trip; counters still hit Redis)",
            f"data: {where}; {results.get('postgres', '')}",
            f"sizes: pipeline {cfg.pipeline_runs} runs, {cfg.pickups} pickups, {cfg.slow_agents} "
            f"× {cfg.slow_latency_ms} ms runs, WORKER_MAX_JOBS={cfg.worker_max_jobs}; tools "
            f"{cfg.tool_runs} runs of each type; metrics up "
            f"to {cfg.max_runs:,} runs over {cfg.metrics_agents} agents × {cfg.metrics_days} days",
            *_busy_note(m["loadavg_at_start"][0]),
        ]
    )


def _busy_note(load: float) -> list[str]:
    if load < 0.5:
        return []
    return [
        f"note: load average {load} at start: other processes share the cores, so absolute "
        "figures are noisy; the ratios and the server's cpu ms/req are steadier"
    ]


async def run_sections(cfg: BenchConfig, services: Services, results: dict[str, Any]) -> None:
    from bench import httpbench, metricsbench, pipelinebench, toolbench, usershape, webhookbench

    sections = {
        "http": httpbench.run,
        "pipeline": pipelinebench.run,
        "usershape": usershape.run,
        "metrics": metricsbench.run,
        "webhooks": webhookbench.run,
        "tools": toolbench.run,
    }
    async with Harness(cfg, services, results["_available"], OUT_DIR) as h:
        results["pinning"] = h.pinning
        results["postgres"] = await _postgres_info(h)
        print(header(results, cfg, services), flush=True)
        _print_availability(results["_available"])
        for name in cfg.sections:
            started = time.monotonic()
            print(f"\n== {name} ==", flush=True)
            try:
                results[name] = await sections[name](h)
            except Exception:  # noqa: BLE001 - report and go on with the next section
                results[name] = {"error": traceback.format_exc()}
                print(f"section {name} failed:\n{results[name]['error']}", flush=True)
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            print(render(name, results[name]), flush=True)
            await h.flush_redis()


def render(name: str, section: dict[str, Any]) -> str:
    from bench import metricsbench, pipelinebench, toolbench, usershape, webhookbench

    parts = []
    if name == "http" and section.get("rows"):
        parts.append(report.http_table(section))
    elif name == "pipeline":
        parts.append(pipelinebench.render(section))
    elif name == "usershape":
        parts.append(usershape.render(section))
    elif name == "metrics":
        parts.append(metricsbench.render(section))
    elif name == "webhooks":
        parts.append(webhookbench.render(section))
    elif name == "tools":
        parts.append(toolbench.render(section))
    parts.extend(section.get("skipped", []))
    parts.extend(section.get("notes", []))
    parts.append(f"({name}: {section.get('seconds', '?')} s)")
    return "\n".join(p for p in parts if p)


async def _postgres_info(h: Harness) -> str:
    from sqlalchemy import text

    async with h.engine.connect() as conn:
        version = await conn.scalar(text("SHOW server_version"))
        fsync = await conn.scalar(text("SHOW fsync"))
        sync_commit = await conn.scalar(text("SHOW synchronous_commit"))
    return f"Postgres {version} (fsync={fsync}, synchronous_commit={sync_commit})"


def _print_availability(available: Any) -> None:
    if available.app_error:
        print(f"! the Agentry app does not build: {available.app_error}")
    if not available.worker:
        print(f"! worker: {available.worker_error}")


def main() -> int:
    t0 = time.monotonic()
    cfg = BenchConfig()
    OUT_DIR.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "uvicorn": resolved_uvicorn_impl(),
        "config": cfg.as_dict(),
        "_available": discover(),
    }
    if (OUT_DIR.parent / ".env").exists():
        print("note: ./.env exists; the servers' settings come from the bench's environment first")
    with ExitStack() as stack:
        services = provide(stack, OUT_DIR / "services")
        try:
            loadgen.run(run_sections(cfg, services, results))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    available = results.pop("_available")
    results["available_routes"] = sorted(f"{m} {p}" for m, p in available.routes)
    text, checks = report.targets_table(results)
    results["targets"] = checks
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n== targets ==\n" + text)
    (OUT_DIR / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\ntotal {results['duration_s']} s; results in {OUT_DIR / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

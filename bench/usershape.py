"""Issue 9: the shape users run, and the one load script we run against peers (DESIGN.md,
"Performance targets"): `agentry dev` — API and worker in ONE process, as `make run` serves
it — driven over HTTP only. The client logs in, spawns agents and submits runs through the
API and polls each run with GET until it ends; no database shortcut.

- throughput: `usershape_runs` no-op runs (`echo`, latency 0), one agent each, submitted 50 at
  a time, each submitter polling its run every 100 ms until final; runs/s from the first
  submit to the last run seen final (client clock);
- pickup: `pickups` runs, one at a time on an idle system; submit→running from the run
  object's `started_at - created_at`;
- concurrency: `usershape_slow` one-second runs (`slow-echo`), one agent each, all submitted
  at once; the effective concurrency is the peak overlap of their [started_at, finished_at],
  and the mean is their total run time over the makespan.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import httpx

from bench.config import agentry_env
from bench.harness import Harness
from bench.procs import HOST, Proc, free_port, python_module
from bench.report import table

EMAIL, PASSWORD = "bench@example.com", "bench-user-shape-pass"
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}
BATCH = 50  # submitters at once, as the peers' script does
POLL_SECONDS = 0.1  # each submitter polls its run this often


async def run(h: Harness) -> dict[str, Any]:
    cfg = h.cfg
    proc = _dev_process(h)
    proc.start()
    out: dict[str, Any] = {"skipped": [], "notes": []}
    try:
        await asyncio.to_thread(proc.wait_http, "/ready", 120)
        limits = httpx.Limits(max_connections=BATCH * 2, max_keepalive_connections=BATCH * 2)
        base = f"http://{HOST}:{proc.port}/api/v1"
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            api = await _Api.login(client)
            echo, slow = await api.type_id("echo"), await api.type_id("slow-echo")
            await api.wait_final(await api.submit(await api.spawn(echo)))  # warm every pool
            out["e2e"] = await _throughput(api, echo, cfg.usershape_runs)
            print(f"  end to end: {out['e2e']['runs_per_s']} runs/s", flush=True)
            out["pickup"] = await _pickup(api, echo, cfg.pickups)
            print(f"  pickup: p50 {out['pickup']['p50_ms']} ms", flush=True)
            out["concurrency"] = await _concurrency(api, slow, cfg.usershape_slow)
            print(f"  concurrency: peak {out['concurrency']['peak']}", flush=True)
    finally:
        proc.stop(grace=20)
    return out


def _dev_process(h: Harness) -> Proc:
    port = free_port()
    env = agentry_env(h.services.database_url, h.services.redis_url)
    env |= {"HOST": HOST, "PORT": str(port), "FIRST_SUPERUSER_EMAIL": EMAIL}
    env |= {"FIRST_SUPERUSER_PASSWORD": PASSWORD, "QUEUE_NAME": "agentry:bench-dev"}
    return Proc(
        name="dev",
        args=python_module("backend.cli", "dev"),
        env=env,
        log_path=h.out_dir / "logs" / "dev.log",
        cpus=h.server_cpus(),
        port=port,
    )


class _Api:
    def __init__(self, client: httpx.AsyncClient, project: str) -> None:
        self.client, self.project = client, project

    @classmethod
    async def login(cls, client: httpx.AsyncClient) -> _Api:
        response = await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
        response.raise_for_status()
        client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        name = f"usershape-{time.time_ns()}"
        project = await client.post("/projects", json={"name": name})
        project.raise_for_status()
        return cls(client, project.json()["id"])

    async def type_id(self, slug: str) -> str:
        response = await self.client.get("/agent-types", params={"limit": 100})
        return next(t["id"] for t in response.json()["data"] if t["slug"] == slug)

    async def spawn(self, type_id: str) -> str:
        body = {"agent_type_id": type_id, "name": f"a-{time.time_ns()}"}
        response = await self.client.post(f"/projects/{self.project}/agents", json=body)
        response.raise_for_status()
        return response.json()["id"]

    async def submit(self, agent: str) -> str:
        url = f"/projects/{self.project}/agents/{agent}/runs"
        response = await self.client.post(url, json={"input": "ping"})
        response.raise_for_status()
        return response.json()["id"]

    async def wait_final(self, run: str) -> dict[str, Any]:
        while True:
            response = await self.client.get(f"/projects/{self.project}/runs/{run}")
            body = response.json()
            if body.get("status") in FINAL:
                return body
            await asyncio.sleep(POLL_SECONDS)


async def _in_batches(count: int, job: Any) -> list[Any]:
    results: list[Any] = []
    for start in range(0, count, BATCH):
        results += await asyncio.gather(*(job() for _ in range(min(BATCH, count - start))))
    return results


async def _throughput(api: _Api, type_id: str, count: int) -> dict[str, Any]:
    agents = await _in_batches(count, lambda: api.spawn(type_id))
    pending = iter(agents)

    async def one() -> dict[str, Any]:
        return await api.wait_final(await api.submit(next(pending)))

    started = time.monotonic()
    runs = await _in_batches(count, one)
    seconds = time.monotonic() - started
    return {
        "runs": count,
        "seconds": round(seconds, 2),
        "runs_per_s": round(count / seconds, 1),
        "statuses": _statuses(runs),
    }


async def _pickup(api: _Api, type_id: str, count: int) -> dict[str, Any]:
    agent = await api.spawn(type_id)
    waits = []
    for _ in range(count):
        run = await api.wait_final(await api.submit(agent))
        waits.append((_at(run["started_at"]) - _at(run["created_at"])).total_seconds() * 1000)
        await asyncio.sleep(0.05)  # idle between pickups
    waits.sort()
    return {
        "count": count,
        "p50_ms": round(statistics.median(waits), 1),
        "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 1),
    }


async def _concurrency(api: _Api, type_id: str, count: int) -> dict[str, Any]:
    agents = await _in_batches(count, lambda: api.spawn(type_id))
    ids = await asyncio.gather(*(api.submit(agent) for agent in agents))
    runs = await asyncio.gather(*(api.wait_final(run) for run in ids))
    spans = [(_at(r["started_at"]), _at(r["finished_at"])) for r in runs if r["started_at"]]
    makespan = (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()
    busy = sum((end - start).total_seconds() for start, end in spans)
    return {
        "runs": count,
        "peak": _peak(spans),
        "mean": round(busy / makespan, 1) if makespan else None,
        "makespan_s": round(makespan, 2),
        "statuses": _statuses(runs),
    }


def _peak(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def _statuses(runs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return counts


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def render(section: dict[str, Any]) -> str:
    if "e2e" not in section:
        return ""
    e2e, pickup, conc = section["e2e"], section["pickup"], section["concurrency"]
    rows = [
        ["end to end (runs/s)", e2e["runs_per_s"], "≥ 300", "LangGraph 205, Aegra 46"],
        ["pickup p50 (ms)", pickup["p50_ms"], "≤ 20", "LangGraph 750, Aegra 8"],
        [f"concurrency of {conc['runs']} × 1 s (peak)", conc["peak"], "≥ 180", "68–79, 46"],
        ["  mean over the makespan", conc["mean"], "", ""],
    ]
    return table(["`agentry dev`, over HTTP", "measured", "target", "peers"], rows)

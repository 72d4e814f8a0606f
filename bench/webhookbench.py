"""Issue 12: what webhooks cost the run pipeline, and how soon an event reaches a receiver.

One run worker process beside the API (as in the pipeline section), fake provider at latency
0, a backlog of `pipeline_runs` runs (one per agent) drained by the worker; runs/s, and CPU
per run of the worker and of its Postgres backends (steadier than runs/s on a shared machine):
- none: a project without webhooks;
- writes: one endpoint subscribed to every event (5 events per run, 4 written by the worker's
  claims and conclusions) and nobody delivering meanwhile: what webhooks cost the run
  pipeline itself. Then a delivery process (`agentry webhooks`) delivers that backlog:
  events/s and CPU per event of the delivery process and of Postgres;
- dedicated: the recommended deployment (README): the worker with
  WEBHOOK_DELIVERY_ENABLED=false, an `agentry webhooks` process delivering meanwhile (pinned to
  the API's core, idle during a drain; Postgres floats): it shares this machine's two cores;
- same process: the worker delivers too (the default, and `agentry dev`).
Latency: event commit (`webhook_events.created_at`) to its arrival at a receiver in the bench
process, p50/p99, for sequential runs on an idle system, and for the events of the dedicated
drain (the backlog's events wait for the delivery process's pace).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, text

from backend.webhooks import signing
from backend.webhooks.models import WebhookEndpoint
from bench import cpu
from bench import pipelinebench as pipe
from bench.config import SECRET_KEY, agentry_env
from bench.harness import Harness
from bench.procs import Proc, python_module
from bench.report import table


class Receiver:
    """Answers 204 to every POST; records each webhook-id's first arrival (wall clock)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = webhook_id = ""
                for line in head.split("\r\n"):
                    name, _, value = line.partition(":")
                    if name == "content-length":
                        length = value.strip()
                    elif name == "webhook-id":
                        webhook_id = value.strip()
                await reader.readexactly(int(length or 0))
                self.arrived.setdefault(webhook_id, time.time())
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def run(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": [], "notes": []}
    if not h.available.worker:
        out["skipped"].append("skipped: webhooks — " + (h.available.worker_error or "no worker"))
        return out
    receiver = Receiver()
    url = await receiver.start()

    async def subscribe(project: uuid.UUID) -> None:
        async with h.engine.begin() as conn:
            await conn.execute(
                insert(WebhookEndpoint).values(
                    id=uuid.uuid4(),
                    project_id=project,
                    url=url,
                    events=["*"],
                    enabled=True,
                    secret_encrypted=signing.encrypt(signing.new_secret(), SECRET_KEY),
                )
            )

    fast = await pipe.create_fake_type(h.engine, "bench-hooks", {"latency_ms": 0})
    worker = pipe._worker(h)
    worker.env["WEBHOOK_ALLOW_PRIVATE_URLS"] = "true"  # the receiver is on 127.0.0.1
    deliverer = _deliverer(h)
    api = await h.start_agentry("webhooks-api")
    runs = h.cfg.pipeline_runs
    mine = await cpu.own_backends(h.engine)
    async with h.engine.connect() as conn:
        backend = await conn.scalar(text("SELECT pg_backend_pid()"))
        database = await conn.scalar(text("SELECT current_database()"))
    groups = {
        "worker": cpu.children(lambda: worker.popen),
        "deliverer": cpu.children(lambda: deliverer.popen),
        "postgres": cpu.postgres_backends(backend, database, exclude=mine),
    }
    try:
        with cpu.CpuMeter(groups) as meter:
            worker.env["WEBHOOK_DELIVERY_ENABLED"] = "false"
            worker.start()
            deliverer.start()
            await pipe._warm_up(h, api, worker, fast)
            idle = await pipe._pickup(h, api, worker, fast, h.cfg.pickups, subscribe)
            await asyncio.sleep(1)  # the last deliveries
            out["idle"] = await _latency(h, receiver, idle["project_id"])
            worker.stop(grace=15)
            deliverer.stop(grace=15)
            # Alternating rounds, the median of each: one drain lasts about a second, and this
            # machine's other tenants come and go.
            drains: dict[str, list[dict[str, Any]]] = {"none": [], "writes": []}
            for _ in range(max(h.cfg.rounds, ROUNDS)):
                drains["none"].append(await _drain(h, api, worker, fast, meter))
                drains["writes"].append(await _drain(h, api, worker, fast, meter, subscribe))
            out["none"], out["writes"] = _median(drains["none"]), _median(drains["writes"])
            deliverer.start()
            projects = [d["project_id"] for d in drains["writes"]]
            for project in projects:
                await _delivered(h, project, timeout=60 + runs / 10)
            out["backlog"] = await _backlog(h, meter, projects)
            out["dedicated"] = await _drain(h, api, worker, fast, meter, subscribe)
            project = out["dedicated"]["project_id"]
            await _delivered(h, project, timeout=60 + runs / 10)
            out["drain"] = await _latency(
                h, receiver, project, since=await _first_start(h, project)
            )
            deliverer.stop(grace=15)
            worker.env["WEBHOOK_DELIVERY_ENABLED"] = "true"
            out["same"] = await _drain(h, api, worker, fast, meter, subscribe)
    finally:
        worker.stop(grace=15)
        deliverer.stop(grace=15)
        api.stop()
        await receiver.stop()
    base = out["none"]["runs_per_s"]
    base_cpu = sum(out["none"]["cpu_ms_per_run"].values())
    for name in ("writes", "dedicated", "same"):
        figure = out[name]["runs_per_s"]
        out[f"cost_{name}"] = round(1 - figure / base, 3) if base and figure else None
        cpu_used = sum(out[name]["cpu_ms_per_run"].values())
        out[f"cpu_cost_{name}"] = round(cpu_used / base_cpu - 1, 3) if base_cpu else None
    return out


ROUNDS = 3


def _median(drains: list[dict[str, Any]]) -> dict[str, Any]:
    """The drain of median runs/s, with the median CPU per run of each process group and
    every round's runs/s."""
    ordered = sorted(drains, key=lambda d: d["runs_per_s"] or 0)
    out = dict(ordered[len(ordered) // 2])
    out["rounds_runs_per_s"] = [d["runs_per_s"] for d in drains]
    out["cpu_ms_per_run"] = {
        k: statistics.median(d["cpu_ms_per_run"][k] for d in drains)
        for k in drains[0]["cpu_ms_per_run"]
    }
    return out


def _deliverer(h: Harness) -> Proc:
    """`agentry webhooks`, on the API's core (idle while the worker drains a backlog)."""
    env = agentry_env(
        h.services.database_url, h.services.redis_url, WEBHOOK_ALLOW_PRIVATE_URLS="true"
    )
    return Proc(
        name="webhooks",
        args=python_module("backend.cli", "webhooks"),
        env=env,
        log_path=h.out_dir / "logs" / "webhooks.log",
        cpus=h.server_cpus(),
    )


async def _drain(
    h: Harness,
    api: Proc,
    worker: Proc,
    type_id: uuid.UUID,
    meter: cpu.CpuMeter,
    prepare: pipe.Prepare = None,
) -> dict[str, Any]:
    """A backlog drained by the worker (started by `_batch`, stopped after); CPU per run from
    the first start to the last finish."""
    out = await pipe._batch(h, api, worker, type_id, h.cfg.pipeline_runs, "drain", prepare)
    worker.stop(grace=15)
    async with h.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT min(started_at) AS first, max(finished_at) AS last, count(*) AS n"
                    " FROM runs WHERE project_id = :p"
                ),
                {"p": out["project_id"]},
            )
        ).one()
    used = meter.used(row.first.timestamp(), row.last.timestamp())
    out["cpu_ms_per_run"] = {k: round(v * 1000 / row.n, 3) for k, v in used.items()}
    return out


async def _backlog(h: Harness, meter: cpu.CpuMeter, projects: list[uuid.UUID]) -> dict[str, Any]:
    """The delivery process's pace on a backlog: events/s and CPU per event, from its first
    delivery (its start-up is not counted) to its last."""
    async with h.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) AS n, min(d.delivered_at) AS first,"
                    " max(d.delivered_at) AS last FROM webhook_deliveries d"
                    " JOIN webhook_events e ON e.id = d.event_id"
                    " WHERE e.project_id = ANY(:p) AND d.status = 'succeeded'"
                ),
                {"p": projects},
            )
        ).one()
    if row.n < 2:
        return {"events": row.n}
    first, last = row.first.timestamp(), row.last.timestamp()
    used = meter.used(first, last)
    return {
        "events": row.n,
        "events_per_s": pipe._r((row.n - 1) / (last - first) if last > first else None),
        "cpu_ms_per_event": {k: round(v * 1000 / (row.n - 1), 3) for k, v in used.items()},
    }


async def _delivered(h: Harness, project: uuid.UUID, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with h.engine.connect() as conn:
            pending = await conn.scalar(
                text(
                    "SELECT (SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e"
                    " ON e.id = d.event_id WHERE e.project_id = :p AND d.status = 'pending')"
                    " + (SELECT count(*) FROM webhook_events WHERE project_id = :p"
                    " AND NOT fanned_out)"
                ),
                {"p": project},
            )
        if not pending:
            return
        await asyncio.sleep(0.1)


async def _first_start(h: Harness, project: uuid.UUID) -> datetime:
    async with h.engine.connect() as conn:
        return await conn.scalar(
            text("SELECT min(started_at) FROM runs WHERE project_id = :p"), {"p": project}
        )


async def _latency(
    h: Harness, receiver: Receiver, project: uuid.UUID, since: datetime | None = None
) -> dict[str, Any]:
    """Event commit → arrival, for the project's events written since `since` (the drain's
    start: the submits' events waited for the worker by design)."""
    async with h.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, created_at FROM webhook_events WHERE project_id = :p"
                    " AND created_at >= :since"
                ),
                {"p": project, "since": since or datetime(2000, 1, 1, tzinfo=UTC)},
            )
        ).all()
    waits = [
        (receiver.arrived[str(r.id)] - r.created_at.timestamp()) * 1000
        for r in rows
        if str(r.id) in receiver.arrived
    ]
    return {
        "events": len(rows),
        "delivered": len(waits),
        "p50_ms": pipe._r(pipe._pct(waits, 50)),
        "p99_ms": pipe._r(pipe._pct(waits, 99)),
    }


def _cpu(b: dict[str, Any], key: str = "cpu_ms_per_run") -> str:
    c = b.get(key) or {}
    return ", ".join(f"{k} {v:.3f}" for k, v in c.items() if v >= 0.0005) or "n/a"


def render(section: dict[str, Any]) -> str:
    if "none" not in section:
        return ""
    rows = []
    for key, label in (
        ("none", "no webhooks"),
        ("writes", "1 endpoint, nobody delivering meanwhile"),
        ("dedicated", "1 endpoint, `agentry webhooks` delivering"),
        ("same", "1 endpoint, delivered by the worker itself"),
    ):
        b = section[key]
        rounds = b.get("rounds_runs_per_s")
        what = f"median of {rounds}" if rounds else "one drain"
        rows.append([f"drain: {label}", f"{b['finished']}/{b['runs']} runs", f"{b['runs_per_s']} runs/s ({what})"])  # fmt: skip
        rows.append(["  CPU ms per run", "", _cpu(b)])
        cost, cpu_cost = section.get(f"cost_{key}"), section.get(f"cpu_cost_{key}")
        if key != "none":
            rows.append(["  cost (target ≤ 10 %)", "", "n/a" if cost is None else f"{cost:.1%} fewer runs/s; {cpu_cost:+.1%} CPU per run"])  # fmt: skip
    b = section.get("backlog") or {}
    rows.append(["`agentry webhooks` on that backlog", f"{b.get('events')} events", f"{b.get('events_per_s')} events/s"])  # fmt: skip
    rows.append(["  CPU ms per event", "", _cpu(b, "cpu_ms_per_event")])
    for key, label in (("idle", "event → receiver, sequential runs"), ("drain", "event → receiver, dedicated drain")):  # fmt: skip
        lat = section.get(key) or {}
        rows.append([label, f"{lat.get('delivered')}/{lat.get('events')} events", f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms"])  # fmt: skip
    return (
        "one run worker process (CPU 1), `agentry webhooks` on the API's core (CPU 0), Postgres"
        " unpinned; receiver in the bench process\n"
        + table(["measure", "", "result"], rows, left=3)
    )

"""Issue 12: what webhooks cost the run pipeline, and how soon an event reaches a receiver.

One worker process beside the API (as in the pipeline section), fake provider at latency 0:
- drain: a backlog of `pipeline_runs` runs drained by the worker, for a project without
  webhooks, then for one with one endpoint subscribed to every event (5 events per run):
  with WEBHOOK_DELIVERY_ENABLED=false (the outbox's writes alone: another worker would
  deliver), then delivered by the same worker to a local receiver in this process; runs/s;
- latency: event commit (`webhook_events.created_at`) to its arrival at the receiver, p50/p99,
  for sequential runs on an idle system, and for the events of the drain.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, text

from backend.webhooks import signing
from backend.webhooks.models import WebhookEndpoint
from bench import pipelinebench as pipe
from bench.config import SECRET_KEY
from bench.harness import Harness
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
    api = await h.start_agentry("webhooks-api")
    runs = h.cfg.pipeline_runs
    try:
        worker.start()
        await pipe._warm_up(h, api, worker, fast)
        idle = await pipe._pickup(h, api, worker, fast, h.cfg.pickups, subscribe)
        await asyncio.sleep(1)  # the last deliveries
        out["idle"] = await _latency(h, receiver, idle["project_id"])
        worker.stop(grace=15)
        out["without"] = await pipe._batch(h, api, worker, fast, runs, "drain")
        worker.stop(grace=15)
        worker.env["WEBHOOK_DELIVERY_ENABLED"] = "false"  # the outbox's writes alone
        out["writes"] = await pipe._batch(h, api, worker, fast, runs, "drain", subscribe)
        worker.stop(grace=15)
        worker.env["WEBHOOK_DELIVERY_ENABLED"] = "true"
        out["with"] = await pipe._batch(h, api, worker, fast, runs, "drain", subscribe)
        await _delivered(h, out["with"]["project_id"], timeout=60 + runs / 10)
        started = await _first_start(h, out["with"]["project_id"])
        out["drain"] = await _latency(h, receiver, out["with"]["project_id"], since=started)
    finally:
        worker.stop(grace=15)
        api.stop()
        await receiver.stop()
    base = out["without"]["runs_per_s"]
    for name in ("writes", "with"):
        figure = out[name]["runs_per_s"]
        out[f"cost_{name}"] = round(1 - figure / base, 3) if base and figure else None
    return out


async def _delivered(h: Harness, project: uuid.UUID, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with h.engine.connect() as conn:
            pending = await conn.scalar(
                text(
                    "SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e"
                    " ON e.id = d.event_id WHERE e.project_id = :p AND d.status = 'pending'"
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


def render(section: dict[str, Any]) -> str:
    if "with" not in section:
        return ""
    w, wr, wo = section["with"], section["writes"], section["without"]
    rows = [["backlog drain, no webhooks", f"{wo['finished']}/{wo['runs']} runs", f"{wo['runs_per_s']} runs/s"]]  # fmt: skip
    for b, cost, label in (
        (wr, section.get("cost_writes"), "1 endpoint, delivered by another worker"),
        (w, section.get("cost_with"), "1 endpoint, delivered by this worker"),
    ):
        rows.append([label, f"{b['finished']}/{b['runs']} runs", f"{b['runs_per_s']} runs/s"])
        rows.append(["  cost (target ≤ 10 %)", "", "n/a" if cost is None else f"{cost:.1%} fewer runs/s"])  # fmt: skip
    for key, label in (("idle", "event → receiver, sequential runs"), ("drain", "event → receiver, during the drain")):  # fmt: skip
        lat = section.get(key) or {}
        rows.append([label, f"{lat.get('delivered')}/{lat.get('events')} events", f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms"])  # fmt: skip
    return (
        "one worker process delivers while it runs runs; receiver in the bench process\n"
        + table(["measure", "", "result"], rows, left=3)
    )

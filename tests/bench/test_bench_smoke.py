"""`make bench` machinery, briefly, against the test services: the load generator on the app
served as the bench serves it, a reference app in its own process, the metrics seeding (it
must agree with what the metrics endpoint reads), the tools section end to end with a few
runs, and the report. No timing assertions."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.main import create_app
from bench import loadgen, metricsbench, pipelinebench, report, toolbench
from bench.config import RATE_LIMIT_MULTIPLIER, BenchConfig
from bench.harness import Harness
from bench.procs import HOST, Proc, free_port, python_module
from bench.routes import discover
from bench.serve import UVICORN_OPTIONS
from bench.services import Services
from bench.world import create_agents, create_fake_type, create_owner, create_project
from tests.conftest import make_settings


async def test_loadgen_drives_the_app_served_like_make_run(settings, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    port = free_port()
    # The bench's settings: the same limits, multiplied so that they never trip.
    app = create_app(
        make_settings(
            settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMIT_MULTIPLIER=RATE_LIMIT_MULTIPLIER
        )
    )
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, **UVICORN_OPTIONS))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        host = f"{HOST}:{port}"
        get = loadgen.build_request(
            "GET", f"/api/v1/projects/{project.id}", host=host, headers=owner.headers
        )
        missing = loadgen.build_request("GET", f"/api/v1/projects/{uuid.uuid4()}", host=host, headers=owner.headers)  # fmt: skip
        # Waits for every answer, so the app is warm before the timed window opens.
        once = await loadgen.send_all(HOST, port, [get] * 7 + [missing] * 3, connections=4)
        timed = await loadgen.measure(HOST, port, [get], seconds=0.5, warmup=0.1, connections=4)
        assert timed.ok > 0
        assert timed.statuses.keys() == {200}
    finally:
        server.should_exit = True
        await serving
    assert once.requests == 10
    assert once.statuses == {200: 7, 404: 3}
    table = report.http_table({"rows": {report.CONST: timed.summary(), "GET x": once.summary()}})
    assert "GET x" in table


async def test_reference_app_runs_in_its_own_process(tmp_path: Path):
    port = free_port()
    proc = Proc(
        name="ref-constant",
        args=python_module("bench.serve", "constant", str(port)),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        log_path=tmp_path / "ref.log",
        port=port,
    )
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_http, "/constant")
        request = loadgen.build_request("GET", "/constant", host=f"{HOST}:{port}")
        result = await loadgen.measure(
            HOST, port, [request], seconds=0.3, warmup=0.1, connections=2
        )
    finally:
        proc.stop()
    assert result.ok > 0
    assert result.errors == 0


async def test_metrics_seed_agrees_with_the_metrics_endpoint(
    engine: AsyncEngine, settings, client, clean
):
    owner = await create_owner(engine, secret=settings.secret_key)
    type_id = await create_fake_type(engine, "smoke", {})
    project = await create_project(engine, owner, "smoke")
    agents = await create_agents(engine, project, type_id, 3, "smoke")
    sql = await metricsbench.seed_sql(engine)
    start = datetime.now(UTC) - timedelta(days=1)
    for count in (300, 200):  # a second batch lands on the first one's rollup rows
        await metricsbench.seed(engine, sql, project, agents, start, timedelta(days=1), count)

    async with engine.connect() as conn:
        runs = (
            await conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded'), "
                    "sum(input_tokens + output_tokens) FROM runs WHERE project_id = :p"
                ),
                {"p": project},
            )
        ).one()
        calls = await conn.scalar(
            text(
                "SELECT sum(input_tokens + output_tokens) FROM provider_calls WHERE project_id = :p"
            ),
            {"p": project},
        )
        agent_sums = (
            await conn.execute(
                text(
                    "SELECT sum(tasks_completed), sum(tokens_used) FROM agents WHERE project_id = :p"
                ),
                {"p": project},
            )
        ).one()
    assert runs[0] == 500
    assert calls == runs[2]
    assert agent_sums == (runs[1], runs[2])

    response = await client.get(f"/api/v1/projects/{project}/metrics", headers=owner.headers)
    assert response.status_code == 200
    totals = response.json()["totals"]
    assert totals["runs"] == 500
    assert totals["succeeded"] == runs[1]
    assert totals["total_tokens"] == runs[2]


def test_peak_concurrency_counts_overlapping_runs():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    s = timedelta(seconds=1)
    rows = [
        {"started_at": t, "finished_at": t + 2 * s},
        {"started_at": t + s, "finished_at": t + 3 * s},
        {"started_at": t + 2 * s, "finished_at": t + 4 * s},  # starts as the first ends
    ]
    assert pipelinebench._peak(rows) == 2


def test_targets_report_unmeasured_figures_as_such():
    text_table, checks = report.targets_table({"http": {"rows": {}}})
    assert all(c["met"] is None for c in checks)
    assert "not measured" in text_table


async def test_tools_section_runs_acting_runs_and_resumes_answered_ones(
    settings, clean, tmp_path: Path
):
    """The section as `make bench` runs it (API, worker and demo MCP server in processes of
    their own), with 3 runs of each type a round and 2 answered runs."""
    cfg = BenchConfig(tool_runs=3, pickups=2, connections=2, pin=False, sections=["tools"])
    services = Services(settings.DATABASE_URL, settings.REDIS_URL, embedded=False)
    async with Harness(cfg, services, discover(), tmp_path) as h:
        section = await toolbench.run(h)

    assert section["skipped"] == []
    plain, mcp, resume = section["plain"], section["mcp"], section["resume"]
    rounds = len(plain["rounds_runs_per_s"])
    assert rounds == len(mcp["rounds_runs_per_s"]) >= 3
    assert plain["all_rounds"]["statuses"] == {"succeeded": 3 * rounds}
    assert plain["steps"] == 3
    assert mcp["all_rounds"]["statuses"] == {"succeeded": 3 * rounds}
    assert mcp["steps"] == 9  # model → demo__add → model, each run
    assert mcp["all_rounds"]["answered"] == 3 * rounds  # `add` answered through MCP
    assert mcp["all_rounds"]["tool_errors"] == 0
    assert {"worker", "api", "mcp"} <= set(mcp["cpu_ms_per_run"])
    assert resume["statuses"] == {"succeeded": 2}
    assert (resume["runs"], resume["resumed"]) == (2, 2)  # each run's answer and its resume found
    assert resume["p50_ms"] is not None
    assert "tool-outputs→running" in toolbench.render(section)
    (check,) = [c for c in report.targets({"tools": section}) if "tool-outputs" in c["target"]]
    assert check["value"] == resume["p50_ms"]

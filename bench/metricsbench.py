"""Issue 5: GET /projects/{p}/metrics p50/p99 with 10⁴, 10⁵ and 10⁶ runs in the project.

Runs, their provider calls, the hourly usage rollups and the agents' counters are seeded with
set-based SQL shaped like backend/usage/service.py writes them: one succeeded-or-failed call
per run priced at its end, the call's tokens and cost in its hour's rollup row (`calls`), the
run counted once in the rollup of the hour it finished (`runs` + its status), the agent's
tokens/cost/tasks. The project's agents and time window stay fixed while the run count grows,
so the number of rollup rows saturates at agents × hours and only the run count changes.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import routes
from bench.harness import Harness
from bench.report import table
from bench.world import FAKE_MODEL, analyze, create_agents, create_fake_type, create_project

SIZES = (10_000, 100_000, 1_000_000)
BATCH = 100_000

_SEED = """
WITH src AS (
    SELECT (CAST(:agents AS uuid[]))[1 + floor(random() * :n_agents)::int] AS agent_id,
           CASE WHEN random() < 0.02 THEN 'failed' ELSE 'succeeded' END AS status,
           CAST(:t0 AS timestamptz) + random() * CAST(:window AS interval) AS created_at,
           10 + floor(random() * 50)::bigint AS input_tokens,
           5 + floor(random() * 20)::bigint AS output_tokens
    FROM generate_series(1, :count)
    ORDER BY created_at  -- each batch sweeps the time indexes once instead of hitting them randomly
),
new_runs AS (
    INSERT INTO runs (id, project_id, agent_id, status, input, output, error, attempt, provider,
                      model, metadata, input_tokens, output_tokens, cache_read_tokens,
                      cache_write_tokens, cost_usd, cost_unknown, worker_id, started_at,
                      finished_at, created_at, updated_at)
    SELECT {new_id}, CAST(:project AS uuid), agent_id, status, 'bench input',
           CASE WHEN status = 'succeeded' THEN 'echo: bench input' END,
           CASE WHEN status = 'failed'
                THEN '{"code": "provider_error", "message": "seeded failure"}'::jsonb END,
           1, 'fake', :model, '{}'::jsonb, input_tokens, output_tokens, 0, 0,
           (input_tokens * 3 + output_tokens * 15) / 1000000.0, false, 'bench-seed',
           created_at + interval '5 ms', created_at + interval '60 ms', created_at,
           created_at + interval '60 ms'
    FROM src
    ORDER BY created_at
    RETURNING id, agent_id, status, input_tokens, output_tokens, cost_usd, finished_at
),
calls AS (
    INSERT INTO provider_calls (id, run_id, project_id, agent_id, attempt, provider, model,
                                succeeded, input_tokens, output_tokens, cache_read_tokens,
                                cache_write_tokens, cost_usd, price_source, raw_usage, error,
                                created_at)
    SELECT {new_id}, id, CAST(:project AS uuid), agent_id, 1, 'fake', :model, status = 'succeeded',
           input_tokens, output_tokens, 0, 0, cost_usd, 'bench-seed',
           jsonb_build_object('input_tokens', input_tokens, 'output_tokens', output_tokens),
           NULL, finished_at
    FROM new_runs
    RETURNING 1
),
rollups AS (
    INSERT INTO usage_rollups (project_id, bucket, agent_id, provider, model, runs, succeeded,
                               failed, cancelled, timed_out, input_tokens, output_tokens,
                               cache_read_tokens, cache_write_tokens, cost_usd,
                               unknown_cost_calls{calls_column})
    SELECT CAST(:project AS uuid), date_trunc('hour', finished_at, 'UTC'), agent_id, 'fake', :model, count(*),
           count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
           0, 0, sum(input_tokens), sum(output_tokens), 0, 0, sum(cost_usd), 0{calls_value}
    FROM new_runs
    GROUP BY 2, 3
    ON CONFLICT (project_id, bucket, agent_id, provider, model) DO UPDATE SET
        runs = usage_rollups.runs + excluded.runs,
        succeeded = usage_rollups.succeeded + excluded.succeeded,
        failed = usage_rollups.failed + excluded.failed,
        input_tokens = usage_rollups.input_tokens + excluded.input_tokens,
        output_tokens = usage_rollups.output_tokens + excluded.output_tokens,
        cost_usd = usage_rollups.cost_usd + excluded.cost_usd{calls_update}
    RETURNING 1
),
agent_totals AS (
    UPDATE agents SET
        tasks_completed = agents.tasks_completed + t.succeeded,
        tokens_used = agents.tokens_used + t.tokens,
        cost_incurred = agents.cost_incurred + t.cost
    FROM (SELECT agent_id, count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                 sum(input_tokens + output_tokens) AS tokens, sum(cost_usd) AS cost
          FROM new_runs GROUP BY agent_id) AS t
    WHERE agents.id = t.agent_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM rollups),
       (SELECT count(*) FROM agent_totals)
"""


def sizes(max_runs: int) -> list[int]:
    chosen = [s for s in SIZES if s <= max_runs]
    if not chosen or (max_runs < SIZES[-1] and max_runs not in chosen):
        chosen.append(max_runs)
    return chosen


async def run(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": [], "skipped": [], "notes": []}
    if not h.available.has(routes.METRICS):
        out["skipped"].append(
            f"skipped: project metrics — {' '.join(routes.METRICS)} not implemented"
        )
        return out
    cfg = h.cfg
    type_id = await create_fake_type(h.engine, "bench-metrics", {})
    project = await create_project(h.engine, h.owner, "bench-metrics")
    agents = await create_agents(h.engine, project, type_id, cfg.metrics_agents, "metrics")
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=cfg.metrics_days)
    window = (t0 - timedelta(hours=1), now + timedelta(hours=1))
    path = f"/api/v1/projects/{project}/metrics?from={_iso(window[0])}&to={_iso(window[1])}"
    out["query"] = path.split("?", 1)[1]
    out["agents"], out["days"] = cfg.metrics_agents, cfg.metrics_days
    sql = await seed_sql(h.engine)
    api = await h.start_agentry("metrics-api")
    try:
        seeded = 0
        for size in sizes(cfg.max_runs):
            started = time.monotonic()
            while seeded < size:
                batch = min(BATCH, size - seeded)
                await seed(
                    h.engine, sql, project, agents, t0, timedelta(days=cfg.metrics_days), batch
                )
                seeded += batch
            seed_s = time.monotonic() - started
            await analyze(h.engine, "runs", "provider_calls", "usage_rollups", "agents")
            out["sizes"].append(await _measure(h, api, path, project, seeded, seed_s))
            print(f"  {seeded:,} runs measured", flush=True)
    finally:
        api.stop()
    return out


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def seed_sql(engine: AsyncEngine) -> str:
    """The seeding statement; `usage_rollups.calls` only where the schema has it."""
    async with engine.connect() as conn:
        has_calls = await conn.scalar(
            text(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'usage_rollups' AND column_name = 'calls'"
            )
        )
        version = int(await conn.scalar(text("SHOW server_version_num")))
    # Time-ordered ids (Postgres 18's uuidv7) append to the id indexes instead of scattering
    # over them; seeding 10⁶ runs with random uuids is several times slower once the indexes
    # outgrow shared_buffers. The ids' order plays no part in what the metrics read.
    new_id = "uuidv7()" if version >= 180000 else "gen_random_uuid()"
    parts = {
        "{new_id}": new_id,
        "{calls_column}": ", calls",
        "{calls_value}": ", count(*)",
        "{calls_update}": ",\n        calls = usage_rollups.calls + excluded.calls",
    }
    sql = _SEED
    for placeholder, value in parts.items():
        sql = sql.replace(placeholder, value if has_calls or placeholder == "{new_id}" else "")
    return sql


async def seed(
    engine: AsyncEngine,
    sql: str,
    project: uuid.UUID,
    agents: list[uuid.UUID],
    t0: datetime,
    window: timedelta,
    count: int,
) -> None:
    """Add `count` finished runs (and their calls, rollups, agent counters) to the project."""
    async with engine.begin() as conn:
        if await conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            # Skip the per-row foreign-key triggers (3 lookups per run): every reference is
            # valid by construction, and they cost as much as the inserts themselves.
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text(sql),
            {
                "agents": agents,
                "n_agents": len(agents),
                "t0": t0,
                "window": window,
                "count": count,
                "project": project,
                "model": FAKE_MODEL,
            },
        )


async def _measure(
    h: Harness, api: Any, path: str, project: uuid.UUID, runs: int, seed_s: float
) -> dict[str, Any]:
    probe = await h.call(api, "GET", path)
    if probe.status_code != 200:
        raise RuntimeError(f"metrics answered {probe.status_code}: {probe.text[:300]}")
    body = probe.json()
    totals = body.get("totals", {})
    async with h.engine.connect() as conn:
        rollups = await conn.scalar(
            text("SELECT count(*) FROM usage_rollups WHERE project_id = :p"), {"p": project}
        )
    requests = [h.request(api, "GET", path)]
    one = await h.load(api, requests, connections=1)
    many = await h.load(api, requests)
    return {
        "runs": runs,
        "seed_seconds": round(seed_s, 1),
        "rollup_rows": rollups,
        "agrees": totals.get("runs") == runs,
        "reported_runs": totals.get("runs"),
        "response_bytes": len(probe.content),
        "c1": one.summary(),
        "many": {**many.summary(), "connections": h.cfg.connections},
    }


def render(section: dict[str, Any]) -> str:
    if not section.get("sizes"):
        return ""
    n = section["sizes"][0]["many"]["connections"]
    rows = [
        [
            f"{s['runs']:,}",
            s["rollup_rows"],
            s["seed_seconds"],
            s["c1"]["p50_ms"],
            s["c1"]["p99_ms"],
            s["many"]["rps"],
            s["many"]["p50_ms"],
            s["many"]["p99_ms"],
            s["many"]["server_cpu_ms_per_req"],
            "yes" if s["agrees"] else f"NO ({s['reported_runs']})",
        ]
        for s in section["sizes"]
    ]
    head = (
        f"GET /projects/{{p}}/metrics?from=…&to=… (the seeded window) over {section['agents']} "
        f"agents × {section['days']} days; (1) = 1 client, ({n}) = {n} clients"
    )
    headers = ["runs", "rollup rows", "seed s", "p50 ms (1)", "p99 ms (1)", f"req/s ({n})",
               f"p50 ms ({n})", f"p99 ms ({n})", "cpu ms/req", "totals agree"]  # fmt: skip
    return head + "\n" + table(headers, rows)

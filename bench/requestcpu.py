"""Server CPU and SQL statements per request, in process: `python -m bench.requestcpu`.

The app runs in this process (create_app + its lifespan, as uvicorn would) and each case
sends N requests straight to its ASGI callable, `BENCH_CPU_CONCURRENCY` at a time, reading
`time.process_time()` around them: the figure is this process's CPU per request (app,
SQLAlchemy, asyncpg, Redis client), blind to Postgres' and Redis' own share and to any HTTP
server, and steady on a shared machine because it counts CPU, not wall time. Each case is
repeated `BENCH_CPU_REPEATS` times, interleaved, and the median reported: an A/B of two
commits is two runs of this script.

Environment: BENCH_CPU_REQUESTS (2000), BENCH_CPU_REPEATS (5), BENCH_CPU_CONCURRENCY (8),
BENCH_CPU_CASES (all: health,get_agent,get_project,list_agents,spawn,submit), BENCH_CPU_PROFILE
(a directory: one pstats dump per case, of its last repetition: yappi's CPU clock when
yappi is installed, else cProfile), BENCH_DATABASE_URL and
BENCH_REDIS_URL as for `make bench` (else embedded servers).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from bench import loadgen
from bench.config import RATE_LIMIT_MULTIPLIER, SECRET_KEY
from bench.services import provide
from bench.world import create_agents, create_fake_type, create_owner, create_project

CASES = ("health", "get_agent", "get_project", "list_agents", "spawn", "submit")


@dataclass
class Case:
    name: str
    method: str
    paths: list[str]
    body: bytes | None
    expect: int


async def _call(app: Any, method: str, path: str, headers: list[Any], body: bytes | None) -> int:
    """One request through the ASGI interface, as a server would make it."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a client that keeps the connection open
        sent = True
        return {"type": "http.request", "body": body or b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _run(
    app: Any, case: Case, headers: list[Any], count: int, concurrency: int
) -> tuple[float, int]:
    """CPU seconds for `count` requests of `case`, and how many answered unexpectedly."""
    paths = iter([case.paths[i % len(case.paths)] for i in range(count)])
    failures = 0

    async def client() -> None:
        nonlocal failures
        for path in paths:
            if await _call(app, case.method, path, headers, case.body) != case.expect:
                failures += 1

    started = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.process_time() - started, failures


@contextmanager
def _profiled(path: Path | None) -> Iterator[None]:
    """yappi on CPU time when installed (it follows coroutines), else cProfile; pstats dumps."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import yappi
    except ImportError:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            profiler.dump_stats(path)
        return
    yappi.clear_stats()
    yappi.set_clock_type("cpu")
    yappi.start()
    try:
        yield
    finally:
        yappi.stop()
        yappi.get_func_stats().save(str(path), type="pstat")


def _counter(engine: Any) -> Callable[[], int]:
    seen = [0]

    def count(*_: Any) -> None:
        seen[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    return lambda: seen[0]


async def _world(database_url: str) -> tuple[Any, dict[str, Case]]:
    engine = create_async_engine(database_url)
    try:
        owner = await create_owner(engine, secret=SECRET_KEY)
        type_id = await create_fake_type(engine, "cpu-echo", {"latency_ms": 0})
        read = await create_project(engine, owner, "cpu-read")
        agents = await create_agents(engine, read, type_id, 100, "read")
        spawn = await create_project(engine, owner, "cpu-spawn")
        submit = await create_project(engine, owner, "cpu-submit")
        targets = await create_agents(engine, submit, type_id, 1000, "submit")
    finally:
        await engine.dispose()
    p = f"/api/v1/projects/{read}"
    spawn_body = json.dumps({"agent_type_id": str(type_id), "name": "cpu-spawned"}).encode()
    cases = {
        "health": Case("GET /health (floor)", "GET", ["/health"], None, 200),
        "get_agent": Case("GET agent", "GET", [f"{p}/agents/{agents[0]}"], None, 200),
        "get_project": Case("GET project", "GET", [p], None, 200),
        "list_agents": Case("GET list 100 agents", "GET", [f"{p}/agents?limit=100"], None, 200),
        "spawn": Case(
            "POST spawn agent", "POST", [f"/api/v1/projects/{spawn}/agents"], spawn_body, 201
        ),
        "submit": Case(
            "POST submit run",
            "POST",
            [f"/api/v1/projects/{submit}/agents/{a}/runs" for a in targets],
            b'{"input": "hello"}',
            202,
        ),
    }
    return owner, cases


async def measure(database_url: str, redis_url: str) -> dict[str, Any]:
    from backend.config import Settings
    from backend.main import create_app

    count = int(os.environ.get("BENCH_CPU_REQUESTS", 2000))
    repeats = int(os.environ.get("BENCH_CPU_REPEATS", 5))
    concurrency = int(os.environ.get("BENCH_CPU_CONCURRENCY", 8))
    names = os.environ.get("BENCH_CPU_CASES", ",".join(CASES)).split(",")
    profile_dir = os.environ.get("BENCH_CPU_PROFILE")
    owner, cases = await _world(database_url)
    settings = Settings(
        ENVIRONMENT="production",
        SECRET_KEY=SECRET_KEY,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
        RATE_LIMIT_MULTIPLIER=float(RATE_LIMIT_MULTIPLIER),
        QUEUE_NAME=f"agentry:cpu:{uuid.uuid4().hex[:8]}",
        _env_file=None,
    )
    app = create_app(settings)
    json_headers = [(b"content-type", b"application/json")]
    headers = [(b"authorization", f"Bearer {owner.token}".encode()), *json_headers]
    cpu: dict[str, list[float]] = {n: [] for n in names}
    statements: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        statements_so_far = _counter(app.state.engine)
        for name in names:  # warm-up: statement caches, prepared statements, pool
            await _run(app, cases[name], headers, 50, concurrency)
        for repeat in range(repeats):
            for name in names:
                profile = None
                if profile_dir and repeat == repeats - 1:
                    profile = Path(profile_dir, f"{name}.prof")
                before = statements_so_far()
                with _profiled(profile):
                    seconds, failures = await _run(app, cases[name], headers, count, concurrency)
                if failures:
                    raise SystemExit(f"{cases[name].name}: {failures} unexpected answers")
                cpu[name].append(seconds / count * 1000)
                statements[name] = (statements_so_far() - before) / count
    return {
        "requests": count,
        "repeats": repeats,
        "concurrency": concurrency,
        "cases": {
            cases[n].name: {
                "cpu_ms_median": round(statistics.median(cpu[n]), 3),
                "cpu_ms_min": round(min(cpu[n]), 3),
                "cpu_ms_max": round(max(cpu[n]), 3),
                "statements": round(statements[n], 2),
            }
            for n in names
        },
    }


def main() -> None:
    with ExitStack() as stack:
        services = provide(stack, Path(tempfile.mkdtemp(prefix="agentry-cpu-")))
        result = loadgen.run(measure(services.database_url, services.redis_url))
    print(f"{'case':<22} {'cpu ms/req (median, min-max)':>30} {'statements':>11}")
    for name, row in result["cases"].items():
        spread = f"{row['cpu_ms_median']:.3f} ({row['cpu_ms_min']:.3f}-{row['cpu_ms_max']:.3f})"
        print(f"{name:<22} {spread:>30} {row['statements']:>11}")
    print(
        f"({result['requests']} requests x {result['repeats']} repeats, "
        f"{result['concurrency']} concurrent, in process on uvloop, server CPU only)"
    )


if __name__ == "__main__":
    main()

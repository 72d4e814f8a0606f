"""Operations endpoints (no /api/v1 prefix): liveness, readiness, Prometheus."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from backend import prometheus
from backend.core.schemas import examples
from backend.webhooks import metrics as webhook_metrics

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    model_config = examples({"status": "ok"})
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = examples(
        {"status": "ok", "database": "ok", "redis": "ok"},
        {"status": "unavailable", "database": "ok", "redis": "unavailable (ConnectionError)"},
    )
    status: Literal["ok", "unavailable"]
    database: str = Field(description='"ok", or why not (e.g. migrations behind head)')
    redis: str = Field(description='"ok", or why not')
    worker: str | None = Field(
        None,
        description='Only where the process also runs a worker (`agentry dev`): "ok", '
        '"unavailable (redis)", "unavailable (database)", "starting" or "stopped"',
    )


@router.get(
    "/health", response_model=Health, operation_id="health", summary="Liveness: the process is up"
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _check_db(request: Request) -> str:
    async with request.app.state.engine.connect() as conn:
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    head = request.app.state.migration_head
    return "ok" if version == head else f"migrations at {version}, head is {head}"


async def _check_redis(request: Request) -> str:
    await request.app.state.redis.ping()
    return "ok"


async def _probe(check, request: Request) -> str:
    try:
        return await asyncio.wait_for(check(request), timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"unavailable ({type(exc).__name__})"


@router.get(
    "/ready",
    response_model=Readiness,
    operation_id="ready",
    summary="Readiness: database and Redis answer, migrations at head",
    responses={503: {"model": Readiness, "description": "Not ready: what is not"}},
)
async def ready(request: Request) -> JSONResponse:
    db, redis = await asyncio.gather(_probe(_check_db, request), _probe(_check_redis, request))
    body = {"database": db, "redis": redis}
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:  # a process that also runs runs (`agentry dev`)
        body["worker"] = worker.health()
    ok = all(part == "ok" for part in body.values())
    body = {"status": "ok" if ok else "unavailable", **body}
    return JSONResponse(body, status_code=200 if ok else 503)


_PROMETHEUS_EXAMPLE = '# TYPE agentry_runs gauge\nagentry_runs{status="queued"} 4.0\n'


@router.get(
    "/metrics",
    operation_id="prometheus_metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {
                "text/plain": {"schema": {"type": "string"}, "example": _PROMETHEUS_EXAMPLE}
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    await prometheus.refresh(request.app)  # runs, tokens, cost, queue: read at scrape time
    await webhook_metrics.refresh(request.app)  # the outbox's backlog
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

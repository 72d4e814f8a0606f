from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from backend import lifecycle
from backend.access import AgentReader, AgentWriter, rate_limit
from backend.agents import service
from backend.agents.models import AgentStatus
from backend.agents.schemas import AgentCreate, AgentEventOut, AgentMetrics, AgentOut, AgentUpdate
from backend.core.db import Session
from backend.core.idempotency import IdempotencyKeyHeader, Outcome, respond, run_idempotent
from backend.core.schemas import Message, Page, Paging, error_responses

router = APIRouter(prefix="/projects/{project_id}/agents")
_READ = error_responses(401, 403, 404, 422, 429)
_WRITE = {**_READ, **error_responses(409)}


@router.post(
    "",
    response_model=AgentOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="spawn_agent",
    summary="Spawn an agent (status idle) from an active agent type; honors Idempotency-Key",
    responses=_WRITE,
    dependencies=[rate_limit("agents.spawn", "20/minute")],
)
async def spawn_agent(
    body: AgentCreate,
    ctx: AgentWriter,
    session: Session,
    idempotency_key: IdempotencyKeyHeader = None,
):
    async def create() -> Outcome:
        agent = await service.spawn(session, ctx, body)
        location = f"/api/v1/projects/{ctx.project.id}/agents/{agent.id}"
        return Outcome(201, agent, {"Location": location})

    return respond(
        await run_idempotent(
            session,
            key=idempotency_key,
            principal=ctx.principal.identity,
            scope=f"agents.spawn:{ctx.project.id}",
            payload=body,
            create=create,
        )
    )


@router.get(
    "",
    response_model=Page[AgentOut],
    operation_id="list_agents",
    summary="List the project's agents, newest first",
    responses=_READ,
    dependencies=[rate_limit("agents.list", "60/minute")],
)
async def list_agents(
    ctx: AgentReader,
    session: Session,
    paging: Paging,
    status_filter: Annotated[
        AgentStatus | None, Query(alias="status", description="Only this status")
    ] = None,
    agent_type_id: Annotated[uuid.UUID | None, Query(description="Only this type")] = None,
):
    items, total = await service.list_agents(
        session, ctx, paging, status=status_filter, agent_type_id=agent_type_id
    )
    return paging.build(items, total)


# Before /{agent_id}: "metrics" is not an agent id.
@router.get(
    "/metrics",
    response_model=AgentMetrics,
    operation_id="get_project_agent_metrics",
    summary="Agent totals of the project (terminated agents count in the usage totals)",
    responses=_READ,
    dependencies=[rate_limit("agents.metrics", "60/minute")],
)
async def project_agent_metrics(ctx: AgentReader, session: Session):
    return await service.project_metrics(session, ctx)


@router.get(
    "/{agent_id}",
    response_model=AgentOut,
    operation_id="get_agent",
    summary="Get an agent",
    responses=_READ,
    dependencies=[rate_limit("agents.get", "60/minute")],
)
async def get_agent(agent_id: uuid.UUID, ctx: AgentReader, session: Session):
    return await service.get(session, ctx, agent_id)


@router.patch(
    "/{agent_id}",
    response_model=AgentOut,
    operation_id="update_agent",
    summary="Update an agent; a status change obeys the lifecycle table",
    responses=_WRITE,
    dependencies=[rate_limit("agents.update", "30/minute")],
)
async def update_agent(agent_id: uuid.UUID, body: AgentUpdate, ctx: AgentWriter, session: Session):
    return await lifecycle.update_agent(session, ctx, agent_id, body)


@router.post(
    "/{agent_id}/pause",
    response_model=AgentOut,
    operation_id="pause_agent",
    summary="Pause an idle, working or waiting agent; its runs wait",
    responses=_WRITE,
    dependencies=[rate_limit("agents.pause", "20/minute")],
)
async def pause_agent(agent_id: uuid.UUID, ctx: AgentWriter, session: Session):
    return await lifecycle.pause_agent(session, ctx, agent_id)


@router.post(
    "/{agent_id}/resume",
    response_model=AgentOut,
    operation_id="resume_agent",
    summary="Resume a paused agent (to idle); its queued runs start",
    responses=_WRITE,
    dependencies=[rate_limit("agents.resume", "20/minute")],
)
async def resume_agent(agent_id: uuid.UUID, ctx: AgentWriter, session: Session):
    return await lifecycle.resume_agent(session, ctx, agent_id)


@router.delete(
    "/{agent_id}",
    response_model=Message,
    operation_id="terminate_agent",
    summary="Terminate an agent; its queued and running runs are cancelled",
    responses=_WRITE,
    dependencies=[rate_limit("agents.terminate", "10/minute")],
)
async def terminate_agent(agent_id: uuid.UUID, ctx: AgentWriter, session: Session):
    agent = await lifecycle.terminate_agent(session, ctx, agent_id)
    return {"success": True, "message": f"Agent '{agent.name}' terminated"}


@router.get(
    "/{agent_id}/metrics",
    response_model=AgentMetrics,
    operation_id="get_agent_metrics",
    summary="Usage metrics of one agent",
    responses=_READ,
    dependencies=[rate_limit("agents.agent_metrics", "60/minute")],
)
async def agent_metrics(agent_id: uuid.UUID, ctx: AgentReader, session: Session):
    return await service.agent_metrics(session, ctx, agent_id)


@router.get(
    "/{agent_id}/events",
    response_model=Page[AgentEventOut],
    operation_id="list_agent_events",
    summary="The agent's status transitions, oldest first",
    responses=_READ,
    dependencies=[rate_limit("agents.events", "60/minute")],
)
async def agent_events(agent_id: uuid.UUID, ctx: AgentReader, session: Session, paging: Paging):
    return paging.build(*await service.list_events(session, ctx, agent_id, paging))

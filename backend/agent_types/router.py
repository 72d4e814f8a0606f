from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from backend.access import CurrentPrincipal, SuperuserSession, rate_limit
from backend.agent_types import service
from backend.agent_types.schemas import AgentTypeCreate, AgentTypeOut, AgentTypeUpdate
from backend.core.db import Session
from backend.core.schemas import Page, Paging, error_responses

router = APIRouter()
_ERR = error_responses(401, 403, 422, 429)
_ERR_ONE = error_responses(401, 403, 404, 422, 429)


@router.get(
    "/agent-types",
    response_model=Page[AgentTypeOut],
    operation_id="list_agent_types",
    summary="List active agent types (superusers: include_inactive=true for all)",
    responses=_ERR,
    dependencies=[rate_limit("agent_types.list", "60/minute")],
)
async def list_agent_types(
    principal: CurrentPrincipal,
    session: Session,
    paging: Paging,
    include_inactive: Annotated[
        bool, Query(description="Superusers only: also list inactive types")
    ] = False,
):
    return paging.build(
        *await service.list_types(session, principal, paging, include_inactive=include_inactive)
    )


@router.get(
    "/agent-types/{agent_type_id}",
    response_model=AgentTypeOut,
    operation_id="get_agent_type",
    summary="Get an agent type (inactive ones: superusers only)",
    responses=_ERR_ONE,
    dependencies=[rate_limit("agent_types.get", "60/minute")],
)
async def get_agent_type(agent_type_id: uuid.UUID, principal: CurrentPrincipal, session: Session):
    return await service.get(session, principal, agent_type_id)


@router.post(
    "/agent-types",
    response_model=AgentTypeOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_agent_type",
    summary="Create an agent type (superuser); slug unique",
    responses={**_ERR, **error_responses(409)},
    dependencies=[rate_limit("agent_types.create", "20/minute")],
)
async def create_agent_type(
    body: AgentTypeCreate,
    principal: SuperuserSession,
    session: Session,
    request: Request,
    response: Response,
):
    secret_key = request.app.state.settings.secret_key
    agent_type = await service.create(session, principal, body, secret_key)
    response.headers["Location"] = f"/api/v1/agent-types/{agent_type.id}"
    return agent_type


@router.patch(
    "/agent-types/{agent_type_id}",
    response_model=AgentTypeOut,
    operation_id="update_agent_type",
    summary="Update an agent type (superuser); is_active=false stops new spawns",
    responses={**_ERR_ONE, **error_responses(409)},
    dependencies=[rate_limit("agent_types.update", "30/minute")],
)
async def update_agent_type(
    agent_type_id: uuid.UUID,
    body: AgentTypeUpdate,
    principal: SuperuserSession,
    session: Session,
    request: Request,
):
    secret_key = request.app.state.settings.secret_key
    return await service.update(session, principal, agent_type_id, body, secret_key)


@router.delete(
    "/agent-types/{agent_type_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_agent_type",
    summary="Delete an agent type (superuser); 409 while a non-terminated agent uses it",
    responses={**_ERR_ONE, **error_responses(409)},
    dependencies=[rate_limit("agent_types.delete", "10/minute")],
)
async def delete_agent_type(
    agent_type_id: uuid.UUID, principal: SuperuserSession, session: Session
) -> None:
    await service.delete(session, principal, agent_type_id)

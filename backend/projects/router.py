from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from backend import lifecycle
from backend.access import (
    AuditReader,
    CurrentPrincipal,
    MembersManager,
    ProjectEditor,
    ProjectOwner,
    ProjectReader,
    rate_limit,
)
from backend.audit import service as audit_service
from backend.audit.schemas import AuditEntry
from backend.core.db import Session
from backend.core.idempotency import IdempotencyKeyHeader, Outcome, respond, run_idempotent
from backend.core.schemas import Page, Paging, error_responses
from backend.projects import service
from backend.projects.schemas import (
    MemberAdd,
    MemberOut,
    MemberUpdate,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
)

router = APIRouter()
_ERR = error_responses(401, 403, 404, 422, 429)


@router.post(
    "/projects",
    response_model=ProjectOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_project",
    summary="Create a project; the caller becomes its owner",
    responses={**_ERR, **error_responses(409)},
    dependencies=[rate_limit("projects.create", "20/minute")],
)
async def create_project(
    body: ProjectCreate,
    principal: CurrentPrincipal,
    session: Session,
    idempotency_key: IdempotencyKeyHeader = None,
):
    async def create() -> Outcome:
        project = await service.create(session, principal, body)
        out = ProjectOut.model_validate(service.to_out(project, "owner"))
        return Outcome(201, out, {"Location": f"/api/v1/projects/{project.id}"})

    return respond(
        await run_idempotent(
            session,
            key=idempotency_key,
            principal=f"user:{principal.user.id}",
            scope="projects.create",
            payload=body,
            create=create,
        )
    )


@router.get(
    "/projects",
    response_model=Page[ProjectOut],
    operation_id="list_projects",
    summary="Projects you are a member of (superusers: all)",
    responses=_ERR,
    dependencies=[rate_limit("projects.list", "60/minute")],
)
async def list_projects(principal: CurrentPrincipal, session: Session, paging: Paging):
    return paging.build(*await service.list_for(session, principal, paging))


@router.get(
    "/projects/{project_id}",
    response_model=ProjectOut,
    operation_id="get_project",
    summary="Get a project",
    responses=_ERR,
    dependencies=[rate_limit("projects.get", "60/minute")],
)
async def get_project(ctx: ProjectReader):
    return service.to_out(ctx.project, ctx.role)


@router.patch(
    "/projects/{project_id}",
    response_model=ProjectOut,
    operation_id="update_project",
    summary="Update a project (admin+)",
    responses=_ERR,
    dependencies=[rate_limit("projects.update", "30/minute")],
)
async def update_project(body: ProjectUpdate, ctx: ProjectEditor, session: Session):
    return service.to_out(await service.update(session, ctx, body), ctx.role)


@router.delete(
    "/projects/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_project",
    summary="Delete a project (owner): terminates its agents and cancels its runs",
    responses=_ERR,
    dependencies=[rate_limit("projects.delete", "10/minute")],
)
async def delete_project(ctx: ProjectOwner, session: Session) -> None:
    await lifecycle.delete_project(session, ctx)


@router.get(
    "/projects/{project_id}/members",
    response_model=Page[MemberOut],
    operation_id="list_members",
    summary="List project members",
    responses=_ERR,
    dependencies=[rate_limit("members.list", "60/minute")],
)
async def list_members(ctx: ProjectReader, session: Session, paging: Paging):
    return paging.build(*await service.list_members(session, ctx, paging))


@router.post(
    "/projects/{project_id}/members",
    response_model=MemberOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="add_member",
    summary="Add a member by email (admin+; granting admin is the owner's)",
    responses={**_ERR, **error_responses(409)},
    dependencies=[rate_limit("members.add", "30/minute")],
)
async def add_member(body: MemberAdd, ctx: MembersManager, session: Session):
    return await service.add_member(session, ctx, body)


@router.patch(
    "/projects/{project_id}/members/{user_id}",
    response_model=MemberOut,
    operation_id="update_member",
    summary="Change a member's role",
    responses={**_ERR, **error_responses(409)},
    dependencies=[rate_limit("members.update", "30/minute")],
)
async def update_member(
    user_id: uuid.UUID, body: MemberUpdate, ctx: MembersManager, session: Session
):
    return await service.update_member(session, ctx, user_id, body.role)


@router.delete(
    "/projects/{project_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="remove_member",
    summary="Remove a member (the owner cannot be removed)",
    responses={**_ERR, **error_responses(409)},
    dependencies=[rate_limit("members.remove", "30/minute")],
)
async def remove_member(user_id: uuid.UUID, ctx: MembersManager, session: Session) -> None:
    await service.remove_member(session, ctx, user_id)


@router.get(
    "/projects/{project_id}/audit-log",
    response_model=Page[AuditEntry],
    operation_id="list_project_audit_log",
    summary="The project's audit log (admin+)",
    responses=_ERR,
    dependencies=[rate_limit("audit.project", "60/minute")],
)
async def project_audit_log(ctx: AuditReader, session: Session, paging: Paging):
    return paging.build(
        *await audit_service.list_entries(session, paging, project_id=ctx.project.id)
    )

"""The one authorization gate: resolve the caller's role in the path's project.

Non-members (and keys limited to another project) get 404 so no tenant's objects
leak; members lacking the role, or keys lacking the scope, get 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Path
from sqlalchemy import and_, bindparam, select

from backend.auth.dependencies import CurrentPrincipal, Principal
from backend.core.db import Session
from backend.core.errors import Forbidden, NotFound
from backend.projects.models import Project, ProjectMember, Role


class Permission(StrEnum):
    project_read = "project:read"
    project_update = "project:update"
    project_delete = "project:delete"
    members_manage = "members:manage"
    audit_read = "audit:read"
    webhooks_manage = "webhooks:manage"
    agents_read = "agents:read"
    agents_write = "agents:write"
    runs_read = "runs:read"
    runs_write = "runs:write"
    metrics_read = "metrics:read"


_VIEWER = {
    Permission.project_read,
    Permission.agents_read,
    Permission.runs_read,
    Permission.metrics_read,
}
_MEMBER = _VIEWER | {Permission.agents_write, Permission.runs_write}
_ADMIN = _MEMBER | {
    Permission.project_update,
    Permission.members_manage,
    Permission.audit_read,
    Permission.webhooks_manage,
}
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.viewer: frozenset(_VIEWER),
    Role.member: frozenset(_MEMBER),
    Role.admin: frozenset(_ADMIN),
    Role.owner: frozenset(_ADMIN | {Permission.project_delete}),
}
# The API key scope each permission needs; None: never through an API key.
KEY_SCOPE: dict[Permission, str | None] = {
    Permission.project_read: "projects:read",
    Permission.agents_read: "agents:read",
    Permission.agents_write: "agents:write",
    Permission.runs_read: "runs:read",
    Permission.runs_write: "runs:write",
    Permission.metrics_read: "metrics:read",
    Permission.project_update: None,
    Permission.project_delete: None,
    Permission.members_manage: None,
    Permission.audit_read: None,
    Permission.webhooks_manage: None,
}


@dataclass(frozen=True)
class ProjectContext:
    principal: Principal
    project: Project
    role: str | None  # the caller's membership role; None for a superuser who is not a member


# Built once: constructing the expressions per request costs more than running them.
_PROJECT_ROLE = (
    select(Project, ProjectMember.role)
    .outerjoin(
        ProjectMember,
        and_(
            ProjectMember.project_id == Project.id,
            ProjectMember.user_id == bindparam("user_id"),
        ),
    )
    .where(Project.id == bindparam("project_id"), Project.deleted_at.is_(None))
)


async def resolve_project(
    session: Session, principal: Principal, project_id: uuid.UUID, permission: Permission
) -> ProjectContext:
    user, key = principal.user, principal.api_key
    if key is not None and key.project_id is not None and key.project_id != project_id:
        raise NotFound(f"Project {project_id} not found")
    known = principal.path_project  # read with the credentials, in the same round trip
    if known is not None and known.project_id == project_id:
        project, role = known.project, known.role
    else:
        params = {"user_id": user.id, "project_id": project_id}
        row = (await session.execute(_PROJECT_ROLE, params)).first()
        project, role = (None, None) if row is None else row
    if project is None or (role is None and not user.is_superuser):
        raise NotFound(f"Project {project_id} not found")
    if role is not None and not user.is_superuser and permission not in ROLE_PERMISSIONS[role]:
        raise Forbidden(f"Your role in this project does not allow {permission.value}")
    if key is not None:
        scope = KEY_SCOPE[permission]
        if scope is None or not principal.has_scope(scope):
            raise Forbidden(f"This API key lacks the scope for {permission.value}")
    return ProjectContext(principal, project, role)


def require(permission: Permission):
    async def dependency(
        session: Session,
        principal: CurrentPrincipal,
        project_id: Annotated[uuid.UUID, Path(description="Project id")],
    ) -> ProjectContext:
        return await resolve_project(session, principal, project_id, permission)

    return Depends(dependency)


ProjectReader = Annotated[ProjectContext, require(Permission.project_read)]
ProjectEditor = Annotated[ProjectContext, require(Permission.project_update)]
ProjectOwner = Annotated[ProjectContext, require(Permission.project_delete)]
MembersManager = Annotated[ProjectContext, require(Permission.members_manage)]
AuditReader = Annotated[ProjectContext, require(Permission.audit_read)]
WebhookManager = Annotated[ProjectContext, require(Permission.webhooks_manage)]
AgentReader = Annotated[ProjectContext, require(Permission.agents_read)]
AgentWriter = Annotated[ProjectContext, require(Permission.agents_write)]
RunReader = Annotated[ProjectContext, require(Permission.runs_read)]
RunWriter = Annotated[ProjectContext, require(Permission.runs_write)]
MetricsReader = Annotated[ProjectContext, require(Permission.metrics_read)]

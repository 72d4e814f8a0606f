"""The one authorization gate: the caller's role in the path's project decides.

Non-members (and keys limited to another project) get 404 so no tenant's objects
leak; members lacking the role, or keys lacking the scope, get 403. The project and the role
are read with the credentials, in one statement (backend/access.py joins `with_path_project`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.dependencies import Principal, columns, take
from backend.core import sql
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


@dataclass(frozen=True, slots=True)
class ProjectRow:
    """A live project as the gate read it (routes that change it load the ORM object)."""

    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    owner_id: uuid.UUID
    monthly_cost_limit_usd: Decimal | None
    monthly_token_limit: int | None
    created_at: datetime
    updated_at: datetime


class PathProject(NamedTuple):
    """The path's project read with the credentials: the gate still decides."""

    project_id: uuid.UUID
    project: ProjectRow | None  # None: no such (live) project
    role: str | None  # the user's membership role, None for a non-member


@dataclass(frozen=True)
class ProjectContext:
    principal: Principal
    project: ProjectRow
    role: str | None  # the caller's membership role; None for a superuser who is not a member


_projects, _members = Project.__table__, ProjectMember.__table__
PROJECT_COLUMNS = [*columns(_projects, ProjectRow, "p_"), _members.c.role.label("p_role")]


def with_path_project(source: Any, user_id: Any) -> Any:
    """`source` (the credentials' tables) outer-joined to the live project :project_id and the
    membership of `user_id` in it: no such project, or no membership, yields NULLs."""
    return source.outerjoin(
        _projects, and_(_projects.c.id == bindparam("project_id"), _projects.c.deleted_at.is_(None))
    ).outerjoin(
        _members, and_(_members.c.project_id == _projects.c.id, _members.c.user_id == user_id)
    )


def path_project(project_id: uuid.UUID, record: Any) -> PathProject:
    """What `with_path_project` read, from a record selecting PROJECT_COLUMNS."""
    if record is None or record["p_id"] is None:
        return PathProject(project_id, None, None)
    return PathProject(project_id, take(ProjectRow, record, "p_"), record["p_role"])


_PROJECT_ROLE = sql.Statement.compiled(
    select(*PROJECT_COLUMNS)
    .select_from(_projects)
    .outerjoin(
        _members,
        and_(_members.c.project_id == _projects.c.id, _members.c.user_id == bindparam("user_id")),
    )
    .where(_projects.c.id == bindparam("project_id"), _projects.c.deleted_at.is_(None))
)


async def resolve_project(
    session: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    permission: Permission,
    *,
    known: PathProject | None = None,
) -> ProjectContext:
    """The gate: the caller's context in the project, or 404/403. `known`: the project and role
    read with the credentials (else read here)."""
    user, key = principal.user, principal.api_key
    if key is not None and key.project_id is not None and key.project_id != project_id:
        raise NotFound(f"Project {project_id} not found")
    if known is None or known.project_id != project_id:
        params = {"user_id": user.id, "project_id": project_id}
        known = path_project(project_id, await sql.fetchrow(session, _PROJECT_ROLE, params))
    project, role = known.project, known.role
    if project is None or (role is None and not user.is_superuser):
        raise NotFound(f"Project {project_id} not found")
    if role is not None and not user.is_superuser and permission not in ROLE_PERMISSIONS[role]:
        raise Forbidden(f"Your role in this project does not allow {permission.value}")
    if key is not None:
        scope = KEY_SCOPE[permission]
        if scope is None or not principal.has_scope(scope):
            raise Forbidden(f"This API key lacks the scope for {permission.value}")
    return ProjectContext(principal, project, role)

"""Access to a route: who calls (backend/auth/dependencies.py), what they may do in the path's
project (backend/projects/dependencies.py), and the route's rate limit — as FastAPI dependencies.

One statement authenticates and, on a project's routes, reads that project and the caller's
role in it; the gate then decides from what it read. Nothing is cached across requests (only
the signature check of an access token, core/security.py): a deactivated user, a revoked key
or a removed member is refused on the very next request, by every API process.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from sqlalchemy import bindparam, select
from starlette.requests import HTTPConnection

from backend.auth import dependencies as credentials
from backend.auth.dependencies import Principal, api_key_header, oauth2
from backend.core import sql
from backend.core.db import Session
from backend.core.errors import Forbidden, Unauthorized
from backend.core.security import InvalidToken, decode_access_token, digest
from backend.projects import dependencies as gate
from backend.projects.dependencies import Permission, ProjectContext

_USER_ID = credentials.USER_SOURCE.c.id
# Built once: a statement per credential kind, the path's project joined (NULLs without one).
_BY_TOKEN = sql.Statement.compiled(
    select(*credentials.USER_COLUMNS, *gate.PROJECT_COLUMNS)
    .select_from(gate.with_path_project(credentials.USER_SOURCE, _USER_ID))
    .where(credentials.BY_TOKEN == bindparam("credential"))
)
_BY_KEY = sql.Statement.compiled(
    select(*credentials.USER_COLUMNS, *credentials.KEY_COLUMNS, *gate.PROJECT_COLUMNS)
    .select_from(gate.with_path_project(credentials.KEY_SOURCE, _USER_ID))
    .where(credentials.BY_KEY == bindparam("credential"))
)
_PATH_PROJECT = "path_project"  # where the request's state keeps what was read of it


def _path_project_id(connection: HTTPConnection) -> uuid.UUID | None:
    raw = connection.path_params.get("project_id")
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError, AttributeError):
        return None  # the route's own validation answers 422


async def authenticate(
    request: Request,
    session: Session,
    token: Annotated[str | None, Depends(oauth2)] = None,
    api_key: Annotated[str | None, Depends(api_key_header)] = None,
) -> Principal:
    """The caller (401 without valid credentials); on a project's path, with that project."""
    project_id = _path_project_id(request)
    params: dict[str, Any] = {"project_id": project_id}
    if api_key:
        params["credential"] = digest(api_key)
        record = await sql.fetchrow(session, _BY_KEY, params)
        principal = credentials.key_principal(record)
        await credentials.note_key_use(session, principal.api_key)  # type: ignore[arg-type]
    elif token:
        settings = request.app.state.settings
        try:
            claims = decode_access_token(
                token, secret=settings.secret_key, algorithm=settings.JWT_ALGORITHM
            )
        except InvalidToken:
            raise Unauthorized("Invalid or expired access token") from None
        params["credential"] = claims.user_id
        record = await sql.fetchrow(session, _BY_TOKEN, params)
        principal = credentials.token_principal(record, claims)
    else:
        raise Unauthorized("Authentication required")
    if project_id is not None:
        request.scope.setdefault("state", {})[_PATH_PROJECT] = gate.path_project(project_id, record)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def require(permission: Permission):
    """The project gate for `permission` on the path's project (404 or 403 when refused)."""

    async def dependency(
        request: Request,
        session: Session,
        principal: CurrentPrincipal,
        project_id: Annotated[uuid.UUID, Path(description="Project id")],
    ) -> ProjectContext:
        known = request.scope.get("state", {}).get(_PATH_PROJECT)
        return await gate.resolve_project(session, principal, project_id, permission, known=known)

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


async def _require_user_session(principal: CurrentPrincipal) -> Principal:
    if principal.api_key is not None:
        raise Forbidden("This route needs a login: API keys cannot use it")
    return principal


UserSession = Annotated[Principal, Depends(_require_user_session)]


async def _require_superuser_session(principal: UserSession) -> Principal:
    if not principal.user.is_superuser:
        raise Forbidden("Superuser privileges required")
    return principal


# Superuser routes (users, agent types, /admin/*) need a superuser's login: an API key,
# even a superuser's, is refused (403), whatever its scopes.
SuperuserSession = Annotated[Principal, Depends(_require_superuser_session)]


async def check_key_project(session: Session, principal: Principal, project_id: uuid.UUID) -> None:
    """An API key may be limited to a project its creator can read (404 otherwise)."""
    await gate.resolve_project(session, principal, project_id, Permission.project_read)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def rate_limit(name: str, default: str):
    """Per-caller limit for an authenticated route (user id, or API key id)."""

    async def dependency(request: Request, principal: CurrentPrincipal) -> None:
        await request.app.state.limiter.enforce(name, default, principal.identity, request)

    return Depends(dependency)


def ip_rate_limit(name: str, default: str, *, fail_closed: bool = False):
    """Per-client-IP limit for an anonymous route (`fail_closed`: 503 while Redis is down)."""

    async def dependency(request: Request) -> None:
        await request.app.state.limiter.enforce(
            name, default, client_ip(request), request, fail_closed=fail_closed
        )

    return Depends(dependency)

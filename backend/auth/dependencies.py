"""Who is calling: a user by JWT, or a user's API key. Plus the per-route rate-limit dependency."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, NamedTuple

from fastapi import Depends, Request, Response
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from backend.auth.models import ApiKey, User
from backend.core.db import Session, utcnow
from backend.core.errors import Forbidden, Unauthorized
from backend.core.security import InvalidToken, decode_access_token, digest
from backend.projects.models import Project, ProjectMember

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

# last_used_at is written at most this often per key and process: no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_used_written: dict[uuid.UUID, float] = {}


class PathProject(NamedTuple):
    """The path's project read with the credentials: the project gate still decides."""

    project_id: uuid.UUID
    project: Project | None  # None: no such (live) project
    role: str | None  # the user's membership role, None for a non-member


@dataclass(frozen=True)
class Principal:
    user: User
    api_key: ApiKey | None = None
    path_project: PathProject | None = field(default=None, compare=False, repr=False)

    @property
    def identity(self) -> str:
        """The rate-limit identity: each API key has its own budget, apart from its owner."""
        return f"key:{self.api_key.id}" if self.api_key else f"user:{self.user.id}"

    def has_scope(self, scope: str) -> bool:
        return self.api_key is None or scope in self.api_key.scopes


# One round trip authenticates and, on a project's routes, reads that project and the
# caller's role in it (outer joins: no project id, or no such project, just yields NULLs).
# Built once: constructing the expressions per request costs more than running them.
def _with_path_project(stmt: Any, where: Any) -> Any:
    return (
        stmt.outerjoin(
            Project, and_(Project.id == bindparam("project_id"), Project.deleted_at.is_(None))
        )
        .outerjoin(
            ProjectMember,
            and_(ProjectMember.project_id == Project.id, ProjectMember.user_id == User.id),
        )
        .where(where)
    )


_BY_TOKEN = _with_path_project(
    select(User, Project, ProjectMember.role).select_from(User),
    User.id == bindparam("user_id"),
)
_BY_KEY = _with_path_project(
    select(ApiKey, User, Project, ProjectMember.role)
    .select_from(ApiKey)
    .join(User, User.id == ApiKey.user_id),
    ApiKey.key_digest == bindparam("key_digest"),
)


def _path_project_id(connection: HTTPConnection) -> uuid.UUID | None:
    raw = connection.path_params.get("project_id")
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError, AttributeError):
        return None  # the route's own validation answers 422


def _path_project(project_id: uuid.UUID | None, row: Any) -> PathProject | None:
    return None if project_id is None else PathProject(project_id, row.Project, row.role)


async def _from_token(connection: HTTPConnection, session: AsyncSession, token: str) -> Principal:
    settings = connection.app.state.settings
    try:
        claims = decode_access_token(
            token, secret=settings.secret_key, algorithm=settings.JWT_ALGORITHM
        )
    except InvalidToken:
        raise Unauthorized("Invalid or expired access token") from None
    project_id = _path_project_id(connection)
    params = {"user_id": claims.user_id, "project_id": project_id}
    row = (await session.execute(_BY_TOKEN, params)).first()
    if row is None or not row.User.is_active or claims.version != row.User.token_version:
        raise Unauthorized("Invalid or expired access token")
    return Principal(row.User, path_project=_path_project(project_id, row))


async def _from_api_key(connection: HTTPConnection, session: AsyncSession, raw: str) -> Principal:
    project_id = _path_project_id(connection)
    params = {"key_digest": digest(raw), "project_id": project_id}
    row = (await session.execute(_BY_KEY, params)).first()
    now = utcnow()
    if row is None:
        raise Unauthorized("Invalid API key")
    key, user = row.ApiKey, row.User
    if key.revoked_at or (key.expires_at and key.expires_at <= now) or not user.is_active:
        raise Unauthorized("Invalid API key")
    last = _last_used_written.get(key.id, 0.0)
    if time.monotonic() - last >= LAST_USED_RESOLUTION.total_seconds():
        _last_used_written[key.id] = time.monotonic()
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key.id,
                (ApiKey.last_used_at.is_(None))
                | (ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return Principal(user, key, path_project=_path_project(project_id, row))


async def authenticate(
    request: Request,
    session: Session,
    token: Annotated[str | None, Depends(oauth2)] = None,
    api_key: Annotated[str | None, Depends(api_key_header)] = None,
) -> Principal:
    if api_key:
        return await _from_api_key(request, session, api_key)
    if token:
        return await _from_token(request, session, token)
    raise Unauthorized("Authentication required")


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


async def _require_user_session(principal: CurrentPrincipal) -> Principal:
    if principal.api_key is not None:
        raise Forbidden("This route needs a login: API keys cannot use it")
    return principal


UserSession = Annotated[Principal, Depends(_require_user_session)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def rate_limit(name: str, default: str):
    """Per-caller limit for an authenticated route (user id, or API key id)."""

    async def dependency(request: Request, response: Response, principal: CurrentPrincipal) -> None:
        await request.app.state.limiter.enforce(
            name, default, principal.identity, response, request
        )

    return Depends(dependency)


def ip_rate_limit(name: str, default: str, *, fail_closed: bool = False):
    """Per-client-IP limit for an anonymous route (`fail_closed`: 503 while Redis is down)."""

    async def dependency(request: Request, response: Response) -> None:
        await request.app.state.limiter.enforce(
            name, default, client_ip(request), response, request, fail_closed=fail_closed
        )

    return Depends(dependency)


async def _require_superuser_session(principal: UserSession) -> Principal:
    if not principal.user.is_superuser:
        raise Forbidden("Superuser privileges required")
    return principal


# Superuser routes (users, agent types, /admin/*) need a superuser's login: an API key,
# even a superuser's, is refused (403), whatever its scopes.
SuperuserSession = Annotated[Principal, Depends(_require_superuser_session)]

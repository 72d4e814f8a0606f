"""Authorization for streaming endpoints, whose browser clients cannot send headers.

`?access_token=` (EventSource) and `?api_key=` (WebSocket) are accepted as alternatives to the
headers and go through the very same authentication and project gate as every route.
"""

from __future__ import annotations

import uuid
from typing import Annotated, NamedTuple

from fastapi import Depends, Path, Query, Request
from starlette.requests import HTTPConnection

from backend.access import authenticate
from backend.auth.dependencies import Principal, api_key_header, oauth2
from backend.core.db import Session
from backend.projects.dependencies import Permission, ProjectContext, resolve_project

AccessTokenQuery = Annotated[
    str | None,
    Query(
        max_length=4096,
        description="Access token, for clients that cannot send headers (EventSource)",
    ),
]


class Credentials(NamedTuple):
    """What the caller presented, kept to re-check a long-lived request (backend/runs/watch)."""

    token: str | None
    api_key: str | None


async def _header_credentials(
    token: Annotated[str | None, Depends(oauth2)] = None,
    api_key: Annotated[str | None, Depends(api_key_header)] = None,
) -> Credentials:
    return Credentials(token, api_key)


HeaderCredentials = Annotated[Credentials, Depends(_header_credentials)]


class StreamAccess(NamedTuple):
    ctx: ProjectContext
    credentials: Credentials


async def authorize(
    connection: HTTPConnection,
    session: Session,
    project_id: uuid.UUID,
    permission: Permission,
    *,
    token: str | None,
    api_key: str | None,
) -> ProjectContext:
    """Authenticate (bearer token or API key) and resolve the caller's role in the project."""
    principal: Principal = await authenticate(
        connection,  # type: ignore[arg-type]  # only .app is read, which WebSockets have too
        session,
        token=token,
        api_key=api_key,
    )
    return await resolve_project(session, principal, project_id, permission)


async def _stream_reader(
    request: Request,
    session: Session,
    project_id: Annotated[uuid.UUID, Path(description="Project id")],
    access_token: AccessTokenQuery = None,
    token: Annotated[str | None, Depends(oauth2)] = None,
    api_key: Annotated[str | None, Depends(api_key_header)] = None,
) -> StreamAccess:
    credentials = Credentials(token or access_token, api_key)
    ctx = await authorize(
        request,
        session,
        project_id,
        Permission.runs_read,
        token=credentials.token,
        api_key=credentials.api_key,
    )
    await request.app.state.limiter.enforce(
        "runs.events", "60/minute", ctx.principal.identity, request
    )
    return StreamAccess(ctx, credentials)


StreamReader = Annotated[StreamAccess, Depends(_stream_reader)]

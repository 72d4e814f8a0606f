from __future__ import annotations

import uuid
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit.models import AuditLog
from backend.core.db import paginate
from backend.core.middleware import current_request_id
from backend.core.schemas import PageParams


class _Id(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


class Actor(Protocol):
    """Who acts (auth's Principal): a user, and the API key they act through, if any."""

    @property
    def user(self) -> _Id: ...

    @property
    def api_key(self) -> _Id | None: ...


def record(
    session: AsyncSession,
    principal: Actor | None,
    action: str,
    *,
    project_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit row to the caller's transaction: it commits or rolls back with the change."""
    session.add(
        AuditLog(
            actor_user_id=principal.user.id if principal else None,
            actor_api_key_id=principal.api_key.id if principal and principal.api_key else None,
            project_id=project_id,
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            details=details or {},
            request_id=current_request_id.get(),
        )
    )


async def list_entries(
    session: AsyncSession, paging: PageParams, *, project_id: uuid.UUID | None = None
) -> tuple[list[AuditLog], int]:
    query = select(AuditLog).order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
    if project_id is not None:
        query = query.where(AuditLog.project_id == project_id)
    return await paginate(session, query, paging)

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Protocol, TypedDict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit.models import AuditLog
from backend.core.db import paginate, utcnow
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


class AuditRow(TypedDict):
    id: uuid.UUID
    actor_user_id: uuid.UUID | None
    actor_api_key_id: uuid.UUID | None
    project_id: uuid.UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    created_at: datetime


def row(
    principal: Actor | None,
    action: str,
    *,
    project_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRow:
    """The audit row of an action: who, where, what, and the request it came with."""
    return {
        "id": uuid.uuid4(),
        "actor_user_id": principal.user.id if principal else None,
        "actor_api_key_id": principal.api_key.id if principal and principal.api_key else None,
        "project_id": project_id,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "details": details or {},
        "request_id": current_request_id.get(),
        "created_at": utcnow(),
    }


def record(session: AsyncSession, principal: Actor | None, action: str, **fields: Any) -> None:
    """Add the action's audit row to the caller's transaction (see `add`)."""
    add(session, row(principal, action, **fields))


def add(session: AsyncSession, audit_row: AuditRow) -> None:
    """Add a `row` to the caller's transaction: it commits or rolls back with the change."""
    session.add(AuditLog(**audit_row))


_COLUMNS = tuple(AuditRow.__annotations__)


def cte(name: str, when: str) -> str:
    """A CTE `name` of a caller's statement inserting the audit row given as `params` (with
    the statement's own parameters), once `when` (a FROM item) has a row: for a hot path that
    writes its change and its audit row in one statement."""
    return f"""{name} AS (
    INSERT INTO audit_logs ({", ".join(_COLUMNS)})
    SELECT {", ".join(f":audit_{c}" for c in _COLUMNS)} FROM {when} LIMIT 1
)"""


def params(audit_row: AuditRow) -> dict[str, Any]:
    """The parameters of `cte` for a `row`."""
    return {f"audit_{k}": json.dumps(v) if k == "details" else v for k, v in audit_row.items()}


async def list_entries(
    session: AsyncSession, paging: PageParams, *, project_id: uuid.UUID | None = None
) -> tuple[list[AuditLog], int]:
    query = select(AuditLog).order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
    if project_id is not None:
        query = query.where(AuditLog.project_id == project_id)
    return await paginate(session, query, paging)

"""Idempotency-Key support for creating POSTs, stored in Postgres for 24 hours.

The key row is inserted in the request's own transaction. A concurrent request
with the same key blocks on the unique index until the first one commits (then
replays its stored response) or rolls back (then proceeds as the first).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import CursorResult, String, UniqueConstraint, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, IdMixin, utcnow
from backend.core.errors import Conflict

TTL = timedelta(hours=24)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat-safe creation: the same key and body within 24 h replay the response",
    ),
]


class IdempotencyKey(IdMixin, Base):
    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(80))
    scope: Mapped[str] = mapped_column(String(120))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), default=utcnow, index=True
    )

    __table_args__ = (UniqueConstraint("principal", "scope", "key"),)


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: BaseModel
    headers: dict[str, str]


def _hash(payload: BaseModel | None) -> str:
    data = payload.model_dump(mode="json") if payload is not None else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


async def run_idempotent(
    session: AsyncSession,
    *,
    key: str | None,
    principal: str,
    scope: str,
    payload: BaseModel | None,
    create: Callable[[], Awaitable[Outcome]],
) -> Outcome | Replay:
    """Run `create` once per (principal, scope, key); later calls replay its response."""
    if key is None:
        return await create()
    request_hash = _hash(payload)
    where = (
        (IdempotencyKey.principal == principal)
        & (IdempotencyKey.scope == scope)
        & (IdempotencyKey.key == key)
    )
    # An expired key is free again.
    await session.execute(
        delete(IdempotencyKey).where(where, IdempotencyKey.created_at < utcnow() - TTL)
    )
    claimed = await session.scalar(
        insert(IdempotencyKey)
        .values(principal=principal, scope=scope, key=key, request_hash=request_hash)
        .on_conflict_do_nothing(index_elements=["principal", "scope", "key"])
        .returning(IdempotencyKey.id)
    )
    if claimed is None:
        row = await session.scalar(select(IdempotencyKey).where(where))
        if row is None or row.status_code is None:
            raise Conflict("A request with this Idempotency-Key is still in progress")
        if row.request_hash != request_hash:
            raise Conflict("Idempotency-Key was already used with a different request body")
        return Replay(row.status_code, row.response_body, row.response_headers or {})
    outcome = await create()
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claimed)
        .values(
            status_code=outcome.status_code,
            response_body=outcome.body.model_dump(mode="json"),
            response_headers=outcome.headers,
        )
    )
    return outcome


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - TTL)
    )
    return cast("CursorResult[Any]", result).rowcount or 0


def respond(result: Outcome | Replay) -> JSONResponse:
    body = result.body.model_dump(mode="json") if isinstance(result, Outcome) else result.body
    return JSONResponse(body, status_code=result.status_code, headers=result.headers)

"""Database kit: declarative base with stable constraint names, engine, and the unit of work.

Invariant: one request = one transaction. `get_session` commits after the route
returns and before the response is sent; anything the route deferred with
`after_commit` (job enqueues) runs only once that commit succeeded.

Safe methods (GET, HEAD, OPTIONS) read in autocommit mode instead: no BEGIN/COMMIT
round trips. Under READ COMMITTED every statement takes its own snapshot anyway, so a
read sees exactly what it would inside a transaction; the only write a read makes (an
API key's throttled last_used_at) is a single statement.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, Select, func, select
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from backend.core.schemas import PageParams

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), uuid.UUID: PG_UUID(as_uuid=True)}


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), default=utcnow, onupdate=utcnow
    )


class LingeringQueuePool(AsyncAdaptedQueuePool):
    """The default pool, except that an overflow connection outlives the burst that opened it.

    QueuePool closes an overflow connection the moment it comes back to a full pool: under a
    load hovering around pool_size, a new Postgres connection (~3 ms of our CPU, a backend
    forked, every statement prepared again) every few requests; measured, 20-60 per second
    at 32 clients. Here it is kept while in use at least every LINGER_SECONDS, then closed.
    The limit (pool_size + max_overflow) is unchanged.
    """

    LINGER_SECONDS = 10.0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._spares: list[tuple[float, ConnectionPoolEntry]] = []  # (returned at, record)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if self._pool.full():
            self._spares.append((time.monotonic(), record))  # an overflow one: it lingers
        else:
            super()._do_return_conn(record)
        self._close_spares(time.monotonic() - self.LINGER_SECONDS)

    def _do_get(self) -> ConnectionPoolEntry:
        if self._spares and self._pool.empty():
            return self._spares.pop()[1]  # the most recently used
        return super()._do_get()

    def _close_spares(self, returned_before: float) -> None:
        while self._spares and self._spares[0][0] < returned_before:
            _, record = self._spares.pop(0)
            try:
                record.close()
            finally:
                self._dec_overflow()

    def checkedin(self) -> int:
        return super().checkedin() + len(self._spares)

    def checkedout(self) -> int:
        return super().checkedout() - len(self._spares)

    def dispose(self) -> None:
        self._close_spares(float("inf"))
        super().dispose()


def create_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 20,
    server_settings: dict[str, str] | None = None,
) -> AsyncEngine:
    # No pool_pre_ping (a round trip per checkout): a request that meets a connection lost to
    # a Postgres restart answers 503, and SQLAlchemy's disconnect handling then invalidates
    # the whole pool, so the next requests reconnect: it recovers without an app restart.
    settings = {"timezone": "UTC", "application_name": "agentry", **(server_settings or {})}
    return create_async_engine(
        url,
        poolclass=LingeringQueuePool,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args={"server_settings": settings},
    )


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, each statement its own transaction: for read-only requests."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AfterCommit = Callable[[], Awaitable[Any]]


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run `action` once the session's transaction has committed (e.g. enqueue a job)."""
    session.info.setdefault("after_commit", []).append(action)


async def commit(session: AsyncSession) -> None:
    """Commit, then run deferred actions; their failures are the sweeper's to repair."""
    await session.commit()
    actions: list[AfterCommit] = session.info.pop("after_commit", [])
    for action in actions:
        try:
            await action()
        except Exception:  # noqa: BLE001 - the committed state is the truth; recovery re-derives it
            import structlog

            structlog.get_logger().warning("after_commit_failed", exc_info=True)


async def rollback(session: AsyncSession) -> None:
    """Roll back, dropping the actions deferred for the transaction that did not happen."""
    session.info.pop("after_commit", None)
    await session.rollback()


class KeepWrites(Exception):
    """Mixin for errors whose request must still commit what it wrote (failed-login audit)."""


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    state = request.app.state
    read_only = request.method in SAFE_METHODS and hasattr(state, "autocommit_engine")
    session: AsyncSession = (
        state.sessionmaker(bind=state.autocommit_engine) if read_only else state.sessionmaker()
    )
    try:
        yield session
        # A read's statements have committed as they ran: only ORM changes or deferred
        # actions still need the commit (close() alone saves a greenlet switch per request).
        if not read_only or _has_pending(session):
            await commit(session)
    except BaseException as exc:
        if isinstance(exc, KeepWrites):
            await commit(session)
        elif not read_only:
            await rollback(session)
        raise
    finally:
        await session.close()


def _has_pending(session: AsyncSession) -> bool:
    return bool(session.new or session.dirty or session.deleted or session.info.get("after_commit"))


# scope="function": the commit happens after the route returns, before the response is sent.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def paginate(
    session: AsyncSession,
    query: Select,
    paging: PageParams,
    *,
    total: Select | None = None,
    scalars: bool = True,
) -> tuple[list[Any], int]:
    """One page of `query` (ordered by the caller) and how many rows there are in all (`total`,
    a count statement; default: the rows of `query`): the count, then the page unless it lies
    past the end. Scalars (ORM objects) by default, else rows."""
    counted = total if total is not None else select(func.count()).select_from(query.subquery())
    count = await session.scalar(counted) or 0
    if count <= paging.offset:
        return [], count
    page = query.offset(paging.offset).limit(paging.limit)
    result = await (session.scalars(page) if scalars else session.execute(page))
    return list(result), count


def storable(text: str) -> str:
    """Text Postgres accepts (TEXT and JSONB refuse NUL; UTF-8 has no lone surrogates): what a
    provider wrote, with those characters replaced by U+FFFD rather than failing its run."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_in(column: str, values: Any) -> str:
    """SQL for a CHECK constraint limiting a VARCHAR status column to a StrEnum's values."""
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({listed})"

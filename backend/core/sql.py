"""Hot-path statements run straight on asyncpg: the worker's pool, or a request's session.

Why this style: through SQLAlchemy's execution machinery (execution context, cursor adapter,
result, ORM loading) a one-row statement costs ~0.3 ms of CPU; the same SQL sent on the
session's own asyncpg connection ~0.05 ms (measured by bench/requestcpu.py). It still runs on
the session's connection and in its transaction: the session's commit (or rollback) ends it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import ClauseElement
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from backend.core.errors import is_connection_error


@dataclass(frozen=True)
class Statement:
    """SQL with asyncpg's positional $n, and the parameter name of each position."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, sql: str) -> Statement:
        """From SQL with :name parameters (rewritten once)."""
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        # `::type` casts are not parameters.
        return cls(re.sub(r"(?<![:\w]):([a-z_]+)", number, sql), tuple(names))

    @classmethod
    def compiled(cls, stmt: ClauseElement) -> Statement:
        """From a SQLAlchemy statement whose parameters are all `bindparam`s (compiled once)."""
        compiled = stmt.compile(dialect=asyncpg_dialect())
        names = getattr(compiled, "positiontup", None) or ()
        return cls(str(compiled), tuple(names))

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def scalar_defaults(table: Any) -> dict[str, Any]:
    """The table's scalar column defaults (as the ORM would write them), for an INSERT here."""
    return {c.name: c.default.arg for c in table.c if c.default is not None and c.default.is_scalar}


_CONNECTION = "core.sql.connection"


async def _connection(session: AsyncSession) -> tuple[AsyncConnection, asyncpg.Connection]:
    """The session's connection, in its transaction (BEGIN sent unless autocommit).

    Remembered for the session's current transaction: asking SQLAlchemy again costs more than
    the statement."""
    transaction = session.sync_session.get_transaction()
    known = session.info.get(_CONNECTION)
    if known is not None and transaction is not None and known[0] is transaction:
        return known[1], known[2]
    connection = await session.connection()
    adapted = connection.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
    if adapted._transaction is None:  # type: ignore[union-attr]
        # SQLAlchemy's asyncpg adapter sends BEGIN lazily, before its first statement: send it
        # as the adapter would, so the session's commit and rollback end this transaction.
        await adapted._start_transaction()  # type: ignore[union-attr]
    driver = adapted.driver_connection  # type: ignore[union-attr]
    session.info[_CONNECTION] = (session.sync_session.get_transaction(), connection, driver)
    return connection, driver


async def fetch(session: AsyncSession, stmt: Statement, params: dict[str, Any]) -> list[Any]:
    """The rows of `stmt` (asyncpg records) run in the session's transaction."""
    connection, driver = await _connection(session)
    args = stmt.args(params)
    sync = connection.sync_connection
    if sync is not None and sync.dispatch.before_cursor_execute:
        # Statement counters (tests, bench/requestcpu.py) see these statements too.
        sync.dispatch.before_cursor_execute(sync, None, stmt.sql, args, None, False)
    try:
        return await driver.fetch(stmt.sql, *args)
    except Exception as exc:
        if not (driver.is_closed() or is_connection_error(exc)):
            raise
        session.info.pop(_CONNECTION, None)
        # A lost connection: let SQLAlchemy meet it too. It then does what it does on a
        # disconnect of its own statements (this connection, and every other one the pool holds
        # from before, is replaced) and raises its error, which the API answers with a 503.
        await connection.exec_driver_sql("SELECT 1")
        raise


async def fetchrow(session: AsyncSession, stmt: Statement, params: dict[str, Any]) -> Any | None:
    rows = await fetch(session, stmt, params)
    return rows[0] if rows else None

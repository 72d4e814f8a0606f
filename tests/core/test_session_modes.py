"""The request's session: one transaction for a write; a read runs without BEGIN/COMMIT."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from backend.audit.models import AuditLog
from backend.core.db import Session
from tests.support.apps import running_app

# now() is the transaction's start: equal across the statements of one transaction,
# different for statements that each run in a transaction of their own.
_NOWS = "SELECT now()", "SELECT pg_sleep(0.02)", "SELECT now()"


def _routes(app: FastAPI) -> None:
    router = APIRouter()

    async def nows(session: Session) -> dict[str, bool]:
        first, _, second = [await session.scalar(text(sql)) for sql in _NOWS]
        return {"one_transaction": first == second}

    router.add_api_route("/t/nows", nows, methods=["GET", "POST"])

    @router.get("/t/read-then-add")
    async def read_then_add(session: Session) -> dict[str, bool]:
        # A read that (unusually) adds an ORM row still gets it committed.
        session.add(AuditLog(action="test.read_write", target_type="test"))
        return {"ok": True}

    app.include_router(router)


async def test_writes_run_in_one_transaction_and_reads_in_autocommit(settings):
    async with running_app(settings, setup=_routes) as (_, client):
        write = await client.post("/t/nows")
        read = await client.get("/t/nows")
    assert write.json() == {"one_transaction": True}
    assert read.json() == {"one_transaction": False}


async def test_orm_changes_made_during_a_read_are_committed(settings, db):
    async with running_app(settings, setup=_routes) as (_, client):
        assert (await client.get("/t/read-then-add")).status_code == 200
    count = await db.scalar(
        text("SELECT count(*) FROM audit_logs WHERE action = 'test.read_write'")
    )
    assert count == 1

"""core/sql.py: statements sent straight on the session's asyncpg connection belong to the
session's transaction — its rollback undoes them, its commit keeps them, and they see what the
session wrote before them."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from backend.auth.models import User
from backend.core import sql
from backend.core.db import create_sessionmaker

_INSERT = sql.Statement.of(
    "INSERT INTO users (id, email, hashed_password, is_active, is_superuser, token_version, "
    "created_at, updated_at) VALUES (:id, :email, 'x', true, false, 0, now(), now()) RETURNING id"
)
_COUNT = sql.Statement.of("SELECT count(*) AS n FROM users WHERE email LIKE :pattern")


def test_named_parameters_become_positional_once():
    stmt = sql.Statement.of("SELECT :a, :b::text, CAST(:a AS int), x::int")
    assert stmt.sql == "SELECT $1, $2::text, CAST($1 AS int), x::int"
    assert stmt.args({"b": "2", "a": 1}) == [1, "2"]


async def test_a_rollback_undoes_them_and_a_commit_keeps_them(engine, db):
    sessionmaker = create_sessionmaker(engine)
    tag = uuid.uuid4().hex[:8]
    async with sessionmaker() as session:
        await sql.fetch(session, _INSERT, {"id": uuid.uuid4(), "email": f"gone-{tag}@x.io"})
        await session.rollback()
    async with sessionmaker() as session:
        await sql.fetch(session, _INSERT, {"id": uuid.uuid4(), "email": f"kept-{tag}@x.io"})
        await session.commit()
    emails = (await db.scalars(select(User.email).where(User.email.like(f"%{tag}%")))).all()
    assert emails == [f"kept-{tag}@x.io"]


async def test_they_see_what_the_session_wrote_before_them(engine, db):
    sessionmaker = create_sessionmaker(engine)
    tag = uuid.uuid4().hex[:8]
    async with sessionmaker() as session:
        session.add(User(email=f"orm-{tag}@x.io", hashed_password="x"))
        await session.flush()
        row = await sql.fetchrow(session, _COUNT, {"pattern": f"%{tag}%"})
        assert row is not None
        assert row["n"] == 1
        await session.rollback()
    assert await db.scalar(select(func.count()).where(User.email.like(f"%{tag}%"))) == 0

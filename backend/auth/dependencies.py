"""Who is calling: a user by JWT, or a user's API key — the credential part of every request.

The columns read, the checks of what was read (active user, token version, key revoked or
expired), and the principal they give. backend/access.py reads them in one statement with the
path's project (the project gate's part); nothing here knows projects.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import Label, and_, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.models import ApiKey, User
from backend.core.db import utcnow
from backend.core.errors import Unauthorized
from backend.core.security import AccessClaims

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

# last_used_at is written at most this often per key and process: no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_used_written: dict[uuid.UUID, float] = {}
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class UserRow:
    """The caller's user as read with the credentials (no password hash)."""

    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    is_superuser: bool
    token_version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserRow:
        return cls(*[getattr(user, f.name) for f in fields(cls)])


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: uuid.UUID
    user_id: uuid.UUID
    project_id: uuid.UUID | None
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class Principal:
    user: UserRow
    api_key: KeyRow | None = None

    @property
    def identity(self) -> str:
        """The rate-limit identity: each API key has its own budget, apart from its owner."""
        return f"key:{self.api_key.id}" if self.api_key else f"user:{self.user.id}"

    def has_scope(self, scope: str) -> bool:
        return self.api_key is None or scope in self.api_key.scopes


def columns(table: Any, row: type, prefix: str) -> list[Label[Any]]:
    """`row`'s fields as columns of `table`, labelled `prefix` + name (see `take`)."""
    return [table.c[f.name].label(prefix + f.name) for f in fields(row)]


def take(row: type[R], record: Any, prefix: str) -> R:
    """The `row` dataclass from a record's columns labelled by `columns`."""
    names = _LABELS.get((row, prefix))
    if names is None:
        names = _LABELS[(row, prefix)] = tuple(prefix + f.name for f in fields(row))  # type: ignore[arg-type]
    return row(*[record[name] for name in names])


_LABELS: dict[tuple[type, str], tuple[str, ...]] = {}


USER_COLUMNS = columns(User.__table__, UserRow, "u_")
KEY_COLUMNS = columns(ApiKey.__table__, KeyRow, "k_")
# What a request's statement selects from, and for which credential (bindparams user_id or
# key_digest). backend/access.py adds the path's project to them.
USER_SOURCE = User.__table__
KEY_SOURCE = ApiKey.__table__.join(User.__table__, User.id == ApiKey.user_id)
BY_TOKEN = User.id
BY_KEY = ApiKey.key_digest


def token_principal(record: Any, claims: AccessClaims) -> Principal:
    """The principal of a verified access token and its user's record (None: no such user)."""
    if record is None or record["u_id"] is None:
        raise Unauthorized("Invalid or expired access token")
    user = take(UserRow, record, "u_")
    if not user.is_active or claims.version != user.token_version:
        raise Unauthorized("Invalid or expired access token")
    return Principal(user)


def key_principal(record: Any) -> Principal:
    """The principal of an API key's record (None: no such key)."""
    if record is None or record["k_id"] is None:
        raise Unauthorized("Invalid API key")
    key, user = take(KeyRow, record, "k_"), take(UserRow, record, "u_")
    if key.revoked_at or (key.expires_at and key.expires_at <= utcnow()) or not user.is_active:
        raise Unauthorized("Invalid API key")
    return Principal(user, key)


async def note_key_use(session: AsyncSession, key: KeyRow) -> None:
    """Set the key's last_used_at, at most once per LAST_USED_RESOLUTION (per process, and
    the conditional UPDATE across processes)."""
    last = _last_used_written.get(key.id, 0.0)
    if time.monotonic() - last < LAST_USED_RESOLUTION.total_seconds():
        return
    _last_used_written[key.id] = time.monotonic()
    now = utcnow()
    await session.execute(
        update(ApiKey)
        .where(
            and_(
                ApiKey.id == key.id,
                (ApiKey.last_used_at.is_(None))
                | (ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, column, delete, func, select, table, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit import service as audit
from backend.auth.dependencies import Principal, UserRow
from backend.auth.models import ApiKey, RefreshToken, User
from backend.auth.schemas import ApiKeyCreate, MeUpdate, Scope, UserCreate, UserUpdate
from backend.config import Settings
from backend.core.db import KeepWrites, paginate, utcnow
from backend.core.errors import BadRequest, Conflict, NotFound, Unauthorized, ValidationFailed
from backend.core.schemas import PageParams
from backend.core.security import (
    create_access_token,
    digest,
    hash_password,
    new_api_key,
    new_refresh_token,
    verify_password,
)

INVALID_CREDENTIALS = "Incorrect email or password"


class LoginFailed(Unauthorized, KeepWrites):
    """401 whose audit row (and any family revocation) must still commit."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


async def create_user(session: AsyncSession, data: UserCreate) -> User:
    user = User(
        email=data.email,
        hashed_password=await hash_password(data.password),
        full_name=data.full_name,
        is_superuser=data.is_superuser,
        is_active=data.is_active,
    )
    session.add(user)
    try:
        # A concurrent registration of the same email waits here on the unique index.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict("A user with this email already exists", field="email") from None
    return user


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email.strip().lower()))


def _issue(settings: Settings, session: AsyncSession, user: User, family: uuid.UUID) -> Tokens:
    refresh = new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family,
            token_digest=digest(refresh),
            expires_at=utcnow() + timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS),
        )
    )
    access = create_access_token(
        user_id=user.id,
        token_version=user.token_version,
        secret=settings.secret_key,
        algorithm=settings.JWT_ALGORITHM,
        minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES,
    )
    return Tokens(access, refresh, settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60)


async def login(settings: Settings, session: AsyncSession, email: str, password: str) -> Tokens:
    user = await get_user_by_email(session, email)
    ok = await verify_password(password, user.hashed_password if user else None)
    if user is None or not ok or not user.is_active:
        audit.record(
            session,
            None,
            "auth.login_failed",
            target_type="user",
            target_id=user.id if user else None,
            details={"email": email.strip().lower()[:320]},
        )
        raise LoginFailed(INVALID_CREDENTIALS)
    audit.record(
        session, Principal(UserRow.of(user)), "auth.login", target_type="user", target_id=user.id
    )
    return _issue(settings, session, user, uuid.uuid4())


async def refresh(settings: Settings, session: AsyncSession, raw: str) -> Tokens:
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_digest == digest(raw)).with_for_update()
    )
    now = utcnow()
    if token is None:
        raise Unauthorized("Invalid refresh token")
    if token.revoked_at is not None:
        # Reuse of a rotated token: someone else may hold the family. End the whole login.
        await revoke_family(session, token.family_id)
        audit.record(
            session,
            None,
            "auth.refresh_reuse",
            target_type="user",
            target_id=token.user_id,
            details={"family_id": str(token.family_id)},
        )
        raise LoginFailed("Refresh token was already used; please log in again")
    user = await session.get(User, token.user_id)
    if token.expires_at <= now or user is None or not user.is_active:
        raise Unauthorized("Invalid refresh token")
    token.revoked_at = now
    return _issue(settings, session, user, token.family_id)


async def revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_all_refresh_tokens(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def logout(session: AsyncSession, raw: str) -> None:
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_digest == digest(raw))
    )
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, None, "auth.logout", target_type="user", target_id=token.user_id)


async def _end_sessions(session: AsyncSession, user: User) -> None:
    """Kill every access token (version bump) and refresh token of the user."""
    user.token_version += 1
    await revoke_all_refresh_tokens(session, user.id)


async def update_me(session: AsyncSession, principal: Principal, data: MeUpdate) -> User:
    user = await session.get_one(User, principal.user.id, with_for_update=True)
    if data.full_name is not None:
        user.full_name = data.full_name
    if data.password is not None:
        if data.current_password is None:
            raise ValidationFailed(
                "current_password is required to change the password", field="current_password"
            )
        if not await verify_password(data.current_password, user.hashed_password):
            raise BadRequest("current_password is incorrect", field="current_password")
        user.hashed_password = await hash_password(data.password)
        await _end_sessions(session, user)
    audit.record(
        session,
        principal,
        "user.update_self",
        target_type="user",
        target_id=user.id,
        details={
            "fields": sorted(data.model_fields_set - {"password", "current_password"})
            + (["password"] if data.password else [])
        },
    )
    return user


async def list_users(session: AsyncSession, paging: PageParams) -> tuple[list[User], int]:
    return await paginate(session, select(User).order_by(User.created_at.desc(), User.id), paging)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} not found")
    return user


async def admin_update_user(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, data: UserUpdate
) -> User:
    user = await get_user(session, user_id)
    if user.id == principal.user.id and (data.is_active is False or data.is_superuser is False):
        raise Conflict("You cannot deactivate or demote yourself")
    changes = data.model_dump(exclude_unset=True, exclude={"password"})
    for field, value in changes.items():
        if value is None and field in ("email", "is_active", "is_superuser"):
            continue
        setattr(user, field, value)
    if data.password is not None:
        user.hashed_password = await hash_password(data.password)
    if data.password is not None or data.is_active is False:
        await _end_sessions(session, user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict("A user with this email already exists", field="email") from None
    audit.record(
        session,
        principal,
        "user.update",
        target_type="user",
        target_id=user.id,
        details={"fields": sorted(data.model_fields_set)},
    )
    return user


# The projects a user owns (projects depend on users, not the other way round).
_projects = table("projects", column("owner_id"), column("deleted_at"))


async def delete_user(session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> None:
    # Locked: a concurrent delete of the same user waits, then finds nothing (404).
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound(f"User {user_id} not found")
    if user.id == principal.user.id:
        raise Conflict("You cannot delete yourself")
    owns = await session.scalar(
        select(func.count())
        .select_from(_projects)
        .where(_projects.c.owner_id == user.id, _projects.c.deleted_at.is_(None))
    )
    if owns:
        raise Conflict("The user owns projects; transfer or delete them first")
    await session.delete(user)
    try:
        # Deleted projects keep their owner (history, usage): such a user cannot go.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(
            "The user is still referenced (e.g. as owner of deleted projects); deactivate them instead"
        ) from None
    audit.record(session, principal, "user.delete", target_type="user", target_id=user.id)


async def create_api_key(
    session: AsyncSession, principal: Principal, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A key of the caller's; one limited to a project needs access.check_key_project first."""
    raw = new_api_key()
    key = ApiKey(
        user_id=principal.user.id,
        name=data.name,
        prefix=raw[:12],
        key_digest=digest(raw),
        project_id=data.project_id,
        scopes=sorted({s.value for s in (data.scopes or list(Scope))}),
        expires_at=utcnow() + timedelta(days=data.expires_in_days)
        if data.expires_in_days
        else None,
    )
    session.add(key)
    await session.flush()
    audit.record(
        session,
        principal,
        "api_key.create",
        project_id=data.project_id,
        target_type="api_key",
        target_id=key.id,
        details={"name": key.name, "scopes": key.scopes},
    )
    return key, raw


async def list_api_keys(
    session: AsyncSession, principal: Principal, paging: PageParams
) -> tuple[list[ApiKey], int]:
    where = (ApiKey.user_id == principal.user.id, ApiKey.revoked_at.is_(None))
    query = select(ApiKey).where(*where).order_by(ApiKey.created_at.desc(), ApiKey.id)
    return await paginate(session, query, paging)


async def revoke_api_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> None:
    key = await session.scalar(
        select(ApiKey).where(
            ApiKey.id == key_id, ApiKey.user_id == principal.user.id, ApiKey.revoked_at.is_(None)
        )
    )
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    key.revoked_at = utcnow()
    audit.record(
        session,
        principal,
        "api_key.revoke",
        project_id=key.project_id,
        target_type="api_key",
        target_id=key.id,
    )


async def ensure_superuser(session: AsyncSession, email: str, password: str) -> bool:
    """Create the first superuser if no user has that email; True when created.

    Safe when several processes start at once (`agentry migrate`, every API's startup): the
    insert does nothing on the unique email, so exactly one of them creates the user.
    """
    data = UserCreate(email=email, password=password, is_superuser=True, full_name="Admin")
    if await get_user_by_email(session, data.email) is not None:
        return False  # the usual case: no argon2 hash per startup
    created = await session.scalar(
        pg_insert(User)
        .values(
            id=uuid.uuid4(),
            email=data.email,
            hashed_password=await hash_password(data.password),
            full_name=data.full_name,
            is_superuser=True,
            is_active=True,
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User.id)
    )
    return created is not None


async def ensure_first_superuser(settings: Settings, session: AsyncSession) -> bool:
    """FIRST_SUPERUSER_EMAIL/PASSWORD's user, if both are set (committed here)."""
    if not (settings.FIRST_SUPERUSER_EMAIL and settings.FIRST_SUPERUSER_PASSWORD):
        return False
    password = settings.FIRST_SUPERUSER_PASSWORD.get_secret_value()
    created = await ensure_superuser(session, settings.FIRST_SUPERUSER_EMAIL, password)
    await session.commit()
    return created


async def purge_refresh_tokens(session: AsyncSession, *, before: datetime) -> int:
    dead_families = (
        select(RefreshToken.family_id)
        .group_by(RefreshToken.family_id)
        .having(func.max(RefreshToken.expires_at) < before)
    )
    result = await session.execute(
        delete(RefreshToken).where(RefreshToken.family_id.in_(dead_families))
    )
    return cast("CursorResult[Any]", result).rowcount or 0

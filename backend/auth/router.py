from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status

from backend.access import (
    CurrentPrincipal,
    SuperuserSession,
    UserSession,
    check_key_project,
    ip_rate_limit,
    rate_limit,
)
from backend.audit import service as audit
from backend.auth import service
from backend.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginForm,
    LoginIn,
    MeUpdate,
    RefreshIn,
    RegisterIn,
    TokenPair,
    UserCreate,
    UserOut,
    UserUpdate,
)
from backend.core.db import Session
from backend.core.errors import Forbidden
from backend.core.schemas import Page, Paging, error_responses

router = APIRouter()
_ANON = error_responses(400, 422, 429)
# Login and register refuse (503) while their limits cannot be counted: never unlimited.
_GUARDED = {**_ANON, **error_responses(503)}
_AUTHED = error_responses(401, 403, 422, 429)


async def _limit_email(request: Request, name: str, email: str) -> None:
    # Against password guessing spread over many IPs: a budget per target email too.
    await request.app.state.limiter.enforce(
        name, "10/minute", email.strip().lower(), request, fail_closed=True
    )


@router.post(
    "/auth/register",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="register",
    summary="Register a new user",
    responses={**_GUARDED, **error_responses(403, 409)},
    dependencies=[ip_rate_limit("auth.register", "10/minute", fail_closed=True)],
)
async def register(body: RegisterIn, request: Request, session: Session):
    if not request.app.state.settings.REGISTRATION_ENABLED:
        raise Forbidden("Registration is disabled")
    await _limit_email(request, "auth.register.email", body.email)
    user = await service.create_user(session, UserCreate(**body.model_dump()))
    audit.record(session, None, "user.register", target_type="user", target_id=user.id)
    return user


async def _login(request: Request, session, email: str, password: str):
    await _limit_email(request, "auth.login.email", email)
    tokens = await service.login(request.app.state.settings, session, email, password)
    return TokenPair(**tokens.__dict__)


@router.post(
    "/auth/login",
    response_model=TokenPair,
    operation_id="login",
    summary="Log in with email and password",
    responses={**_GUARDED, **error_responses(401)},
    dependencies=[ip_rate_limit("auth.login", "30/minute", fail_closed=True)],
)
async def login(body: LoginIn, request: Request, session: Session):
    return await _login(request, session, body.email, body.password)


@router.post(
    "/auth/token",
    response_model=TokenPair,
    operation_id="login_form",
    summary="Log in with an OAuth2 password form (the docs' Authorize button)",
    responses={**_GUARDED, **error_responses(401)},
    dependencies=[ip_rate_limit("auth.login", "30/minute", fail_closed=True)],
)
async def login_form(
    form: Annotated[LoginForm, Form()],
    request: Request,
    session: Session,
):
    return await _login(request, session, form.username[:320], form.password[:1024])


@router.post(
    "/auth/refresh",
    response_model=TokenPair,
    operation_id="refresh_tokens",
    summary="Rotate a refresh token for a new token pair",
    responses={**_ANON, **error_responses(401)},
    dependencies=[ip_rate_limit("auth.refresh", "60/minute")],
)
async def refresh(body: RefreshIn, request: Request, session: Session):
    tokens = await service.refresh(request.app.state.settings, session, body.refresh_token)
    return TokenPair(**tokens.__dict__)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="logout",
    summary="Revoke a refresh token",
    responses=_ANON,
    dependencies=[ip_rate_limit("auth.logout", "60/minute")],
)
async def logout(body: RefreshIn, session: Session) -> None:
    await service.logout(session, body.refresh_token)


@router.get(
    "/users/me",
    response_model=UserOut,
    operation_id="get_me",
    summary="The current user",
    responses=_AUTHED,
    dependencies=[rate_limit("users.me", "120/minute")],
)
async def get_me(principal: CurrentPrincipal):
    return principal.user


@router.patch(
    "/users/me",
    response_model=UserOut,
    operation_id="update_me",
    summary="Update your name or password (password change ends every session)",
    responses={**_AUTHED, **error_responses(400)},
    dependencies=[rate_limit("users.me.update", "10/minute")],
)
async def update_me(body: MeUpdate, principal: UserSession, session: Session):
    return await service.update_me(session, principal, body)


@router.get(
    "/users",
    response_model=Page[UserOut],
    operation_id="list_users",
    summary="List users (superuser)",
    responses=_AUTHED,
    dependencies=[rate_limit("users.list", "60/minute")],
)
async def list_users(principal: SuperuserSession, session: Session, paging: Paging):
    return paging.build(*await service.list_users(session, paging))


@router.post(
    "/users",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_user",
    summary="Create a user (superuser)",
    responses={**_AUTHED, **error_responses(409)},
    dependencies=[rate_limit("users.create", "30/minute")],
)
async def create_user(
    body: UserCreate, principal: SuperuserSession, session: Session, response: Response
):
    user = await service.create_user(session, body)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    audit.record(
        session,
        principal,
        "user.create",
        target_type="user",
        target_id=user.id,
        details={"is_superuser": user.is_superuser},
    )
    return user


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    operation_id="get_user",
    summary="Get a user (superuser)",
    responses={**_AUTHED, **error_responses(404)},
    dependencies=[rate_limit("users.get", "60/minute")],
)
async def get_user(user_id: uuid.UUID, principal: SuperuserSession, session: Session):
    return await service.get_user(session, user_id)


@router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    operation_id="update_user",
    summary="Update a user (superuser); is_active=false ends their tokens and keys at once",
    responses={**_AUTHED, **error_responses(404, 409)},
    dependencies=[rate_limit("users.update", "30/minute")],
)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, principal: SuperuserSession, session: Session
):
    return await service.admin_update_user(session, principal, user_id, body)


@router.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_user",
    summary="Delete a user (superuser)",
    responses={**_AUTHED, **error_responses(404, 409)},
    dependencies=[rate_limit("users.delete", "30/minute")],
)
async def delete_user(user_id: uuid.UUID, principal: SuperuserSession, session: Session) -> None:
    await service.delete_user(session, principal, user_id)


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_api_key",
    summary="Create an API key (the key is shown only in this response)",
    responses={**_AUTHED, **error_responses(404)},
    dependencies=[rate_limit("api_keys.create", "20/minute")],
)
async def create_api_key(body: ApiKeyCreate, principal: UserSession, session: Session):
    if body.project_id is not None:
        await check_key_project(session, principal, body.project_id)
    key, raw = await service.create_api_key(session, principal, body)
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(key).model_dump(), "key": raw})


@router.get(
    "/api-keys",
    response_model=Page[ApiKeyOut],
    operation_id="list_api_keys",
    summary="List your active API keys",
    responses=_AUTHED,
    dependencies=[rate_limit("api_keys.list", "60/minute")],
)
async def list_api_keys(principal: UserSession, session: Session, paging: Paging):
    return paging.build(*await service.list_api_keys(session, principal, paging))


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="revoke_api_key",
    summary="Revoke an API key; it stops working at once",
    responses={**_AUTHED, **error_responses(404)},
    dependencies=[rate_limit("api_keys.revoke", "30/minute")],
)
async def revoke_api_key(key_id: uuid.UUID, principal: UserSession, session: Session) -> None:
    await service.revoke_api_key(session, principal, key_id)

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from backend.core.schemas import Schema, examples, integer, keep, text
from backend.core.security import MAX_PASSWORD_BYTES


def _password_size(v: str) -> str:
    if len(v.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"must be at most {MAX_PASSWORD_BYTES} bytes")
    return v


Password = Annotated[str, Field(min_length=8, max_length=1024), AfterValidator(_password_size)]
AnyPassword = Annotated[str, Field(min_length=1, max_length=1024)]
# A plain address pattern, enforced exactly as documented (email-validator also refused
# reserved domains such as .test, which the schema cannot say); stored lower-cased.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$"
Email = Annotated[
    str, StringConstraints(max_length=320, pattern=EMAIL_PATTERN), AfterValidator(str.lower)
]
_ID = "8d7e2f4a-1b3c-4d5e-9f60-7a8b9c0d1e2f"
_AT = "2026-01-01T00:00:00Z"
FullName = text(200, strip=True)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "ada@example.com", "password": "s3cret-pass", "full_name": "Ada"}
            ]
        },
    )
    email: Email
    password: Password
    full_name: FullName | None = None


class LoginIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"email": "ada@example.com", "password": "s3cret-pass"}]},
    )
    email: text(320, min_length=1)
    password: AnyPassword


class LoginForm(BaseModel):
    """The OAuth2 password grant form (what the docs' Authorize button sends)."""

    model_config = examples({"username": "ada@example.com", "password": "s3cret-pass"})
    grant_type: Annotated[str, StringConstraints(pattern=r"^password$")] | None = None
    username: text(320, min_length=1) = Field(description="The account's email")
    password: str
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


class RefreshIn(Strict):
    model_config = examples({"refresh_token": "agyr_3q2…"}, extra="forbid")
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class TokenPair(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs…",
                    "refresh_token": "agyr_…",
                    "token_type": "bearer",
                    "expires_in": 900,
                }
            ]
        }
    )
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class UserOut(Schema):
    model_config = examples(
        {
            "id": _ID,
            "email": "ada@example.com",
            "full_name": "Ada",
            "is_active": True,
            "is_superuser": False,
            "created_at": _AT,
            "updated_at": _AT,
        }
    )
    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    is_superuser: bool
    created_at: datetime
    updated_at: datetime


class MeUpdate(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"full_name": "Ada Lovelace"}],
            "dependentRequired": {"password": ["current_password"]},
        },
    )
    full_name: FullName | None = None
    password: Password = keep("The new password; needs current_password")
    current_password: AnyPassword = keep()


class UserCreate(Strict):
    model_config = examples(
        {"email": "grace@example.com", "password": "s3cret-pass", "is_superuser": False},
        extra="forbid",
    )
    email: Email
    password: Password
    full_name: FullName | None = None
    is_superuser: StrictBool = False
    is_active: StrictBool = True


class UserUpdate(Strict):
    model_config = examples({"is_active": False}, extra="forbid")
    email: Email | None = None
    password: Password = keep("A new password; ends every session of the user")
    full_name: FullName | None = None
    is_superuser: StrictBool | None = None
    is_active: StrictBool | None = None


class Scope(StrEnum):
    projects_read = "projects:read"
    agents_read = "agents:read"
    agents_write = "agents:write"
    runs_read = "runs:read"
    runs_write = "runs:write"
    metrics_read = "metrics:read"


class ApiKeyCreate(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "ci", "scopes": ["agents:read", "agents:write"], "expires_in_days": 30}
            ]
        },
    )
    name: text(200, min_length=1, strip=True)
    project_id: uuid.UUID | None = None
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=6)] | None = None
    expires_in_days: integer(ge=1, le=3650) | None = None


_KEY = {
    "id": "3c9e1b2a-4d5f-4a6b-8c7d-9e0f1a2b3c4d",
    "name": "ci",
    "prefix": "agy_Xk3b9Qz",
    "project_id": None,
    "scopes": ["agents:read", "agents:write"],
    "expires_at": "2026-02-01T00:00:00Z",
    "created_at": _AT,
    "last_used_at": None,
}


class ApiKeyOut(Schema):
    model_config = examples(_KEY)
    id: uuid.UUID
    name: str
    prefix: str
    project_id: uuid.UUID | None
    scopes: list[Scope]
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    model_config = examples({**_KEY, "key": "agy_Xk3b9Qz…"})
    key: str = Field(description="The secret key; shown only in this response")

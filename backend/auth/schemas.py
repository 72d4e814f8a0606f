from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from backend.core.schemas import Schema
from backend.core.security import MAX_PASSWORD_BYTES


def _password_size(v: str) -> str:
    if len(v.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"must be at most {MAX_PASSWORD_BYTES} bytes")
    return v


Password = Annotated[str, Field(min_length=8, max_length=1024), AfterValidator(_password_size)]
AnyPassword = Annotated[str, Field(min_length=1, max_length=1024)]
Email = Annotated[EmailStr, Field(max_length=320), AfterValidator(lambda v: v.lower())]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


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
    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: AnyPassword


class RefreshIn(Strict):
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
    token_type: str = "bearer"
    expires_in: int


class UserOut(Schema):
    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    is_superuser: bool
    created_at: datetime
    updated_at: datetime


class MeUpdate(Strict):
    full_name: FullName | None = None
    password: Password | None = None
    current_password: AnyPassword | None = None


class UserCreate(Strict):
    email: Email
    password: Password
    full_name: FullName | None = None
    is_superuser: bool = False
    is_active: bool = True


class UserUpdate(Strict):
    email: Email | None = None
    password: Password | None = None
    full_name: FullName | None = None
    is_superuser: bool | None = None
    is_active: bool | None = None


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
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    project_id: uuid.UUID | None = None
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=6)] | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class ApiKeyOut(Schema):
    id: uuid.UUID
    name: str
    prefix: str
    project_id: uuid.UUID | None
    scopes: list[str]
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key; shown only in this response")

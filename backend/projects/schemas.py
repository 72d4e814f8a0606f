from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backend.core.schemas import Money, Schema
from backend.projects.models import Role

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=100)]
Description = Annotated[str, StringConstraints(max_length=5000)]


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    monthly_cost_limit_usd: Annotated[Money, Field(ge=0, le=10**12, decimal_places=6)] | None = None
    monthly_token_limit: Annotated[int, Field(ge=0, le=10**15)] | None = None


class ProjectCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Support bots", "budget": {"monthly_cost_limit_usd": "50.00"}},
            ]
        },
    )
    name: Name
    slug: Slug | None = None
    description: Description | None = None
    budget: Budget | None = None


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    description: Description | None = None
    budget: Budget | None = None

    @model_validator(mode="after")
    def _name_not_null(self) -> ProjectUpdate:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null")
        return self


class ProjectOut(Schema):
    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    owner_id: uuid.UUID
    budget: Budget | None
    created_at: datetime
    updated_at: datetime
    role: str | None = Field(description="The caller's role in the project")


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
    role: Role


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class MemberOut(Schema):
    user_id: uuid.UUID
    email: str
    role: str
    created_at: datetime

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from backend.auth.schemas import Email
from backend.core.schemas import Money, Schema, amount, examples, integer, keep, text
from backend.projects.models import Role

Name = text(200, min_length=1, strip=True)
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=100)]
Description = text(5000)


_ID = "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11"
_USER = "8d7e2f4a-1b3c-4d5e-9f60-7a8b9c0d1e2f"
_AT = "2026-01-01T00:00:00Z"


class BudgetIn(BaseModel):
    """Limits per UTC calendar month; null (or left out): no limit."""

    model_config = examples({"monthly_cost_limit_usd": "50.00"}, extra="forbid")
    monthly_cost_limit_usd: amount(10**12) | None = None
    monthly_token_limit: integer(ge=0, le=10**15) | None = None


class Budget(BaseModel):
    monthly_cost_limit_usd: Money | None = None
    monthly_token_limit: int | None = None


class ProjectCreate(BaseModel):
    model_config = examples(
        {"name": "Support bots", "budget": {"monthly_cost_limit_usd": "50.00"}}, extra="forbid"
    )
    name: Name
    slug: Slug | None = None
    description: Description | None = None
    budget: BudgetIn | None = None


class ProjectUpdate(BaseModel):
    model_config = examples({"description": "Bots of the support team"}, extra="forbid")
    name: Name = keep()
    description: Description | None = None
    budget: BudgetIn | None = None


class ProjectOut(Schema):
    model_config = examples(
        {
            "id": _ID,
            "name": "Support bots",
            "slug": "support-bots",
            "description": None,
            "owner_id": _USER,
            "budget": {"monthly_cost_limit_usd": 50.0, "monthly_token_limit": None},
            "created_at": _AT,
            "updated_at": _AT,
            "role": "owner",
        }
    )
    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    owner_id: uuid.UUID
    budget: Budget | None
    created_at: datetime
    updated_at: datetime
    role: Role | None = Field(description="The caller's role; null for a non-member superuser")


class MemberAdd(BaseModel):
    model_config = examples({"email": "grace@example.com", "role": "member"}, extra="forbid")
    email: Email
    role: Role


class MemberUpdate(BaseModel):
    model_config = examples({"role": "admin"}, extra="forbid")
    role: Role


class MemberOut(Schema):
    model_config = examples(
        {"user_id": _USER, "email": "grace@example.com", "role": "member", "created_at": _AT}
    )
    user_id: uuid.UUID
    email: str
    role: Role
    created_at: datetime

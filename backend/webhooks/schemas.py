from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backend.core.schemas import Schema
from backend.webhooks.models import DeliveryStatus
from backend.webhooks.outbox import SUBSCRIBABLE

EventName = Literal[
    "agent.status_changed", "run.status_changed", "run.requires_action", "budget.exhausted", "*"
]
assert set(EventName.__args__) == {*SUBSCRIBABLE, "*"}  # type: ignore[attr-defined]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Events = Annotated[list[EventName], Field(min_length=1, max_length=len(SUBSCRIBABLE) + 1)]
Description = Annotated[str, StringConstraints(max_length=500)]

_EXAMPLE = {
    "url": "https://ci.example.com/hooks/agentry",
    "events": ["run.status_changed"],
    "description": "CI",
}


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})
    url: Url = Field(description="http(s); private addresses refused unless allowed by config")
    events: Events = Field(description='Event types, or ["*"] for all')
    description: Description | None = None
    enabled: bool = True


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = None

    @model_validator(mode="after")
    def _required_not_null(self) -> WebhookUpdate:
        nulls = [f for f in ("url", "events", "enabled") if f in self.model_fields_set]
        if any(getattr(self, f) is None for f in nulls):
            raise ValueError("url, events and enabled cannot be null")
        return self


class WebhookOut(Schema):
    id: uuid.UUID
    project_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_…: shown only in this response")


class WebhookSecret(BaseModel):
    secret: str = Field(description="The new whsec_… secret; the old one also signs for 24 h")


class DeliveryOut(Schema):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempts: int
    status: DeliveryStatus
    last_response_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None

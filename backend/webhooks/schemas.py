from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StringConstraints

from backend.core.schemas import Schema, examples, keep
from backend.webhooks.models import DeliveryStatus
from backend.webhooks.outbox import SUBSCRIBABLE

EventName = Literal[
    "agent.status_changed", "run.status_changed", "run.requires_action", "budget.exhausted", "*"
]
assert set(EventName.__args__) == {*SUBSCRIBABLE, "*"}  # type: ignore[attr-defined]
# ASCII without controls or spaces: `\s` differs between regex engines (U+0085 is whitespace to
# the API's, not to every client's), so the schema names the characters (IDNs: use punycode).
WEBHOOK_URL_PATTERN = r"^https?://[^\x00-\x20\x7f-\uffff/?#]+[^\x00-\x20\x7f-\uffff]*$"
Url = Annotated[str, StringConstraints(max_length=2000, pattern=WEBHOOK_URL_PATTERN)]
Events = Annotated[list[EventName], Field(min_length=1, max_length=len(SUBSCRIBABLE) + 1)]
Description = Annotated[str, StringConstraints(max_length=500)]

_EXAMPLE: dict[str, Any] = {
    "url": "https://ci.example.com/hooks/agentry",
    "events": ["run.status_changed"],
    "description": "CI",
}


class WebhookCreate(BaseModel):
    model_config = examples(_EXAMPLE, extra="forbid")
    url: Url = Field(description="http(s); private addresses refused unless allowed by config")
    events: Events = Field(description='Event types, or ["*"] for all')
    description: Description | None = None
    enabled: StrictBool = True


class WebhookUpdate(BaseModel):
    """Fields left out keep their value; null clears the description."""

    model_config = examples({"enabled": False}, {"events": ["*"]}, extra="forbid")
    url: Url = keep("http(s); private addresses refused unless allowed by config")
    events: Events = keep('Event types, or ["*"] for all')
    description: Description | None = None
    enabled: StrictBool = keep()


_AT = "2026-01-01T00:00:00Z"
_OUT = {
    "id": "3c5d7e9f-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
    "project_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
    **_EXAMPLE,
    "enabled": True,
    "created_at": _AT,
    "updated_at": _AT,
}
_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class WebhookOut(Schema):
    model_config = examples(_OUT, from_attributes=True)
    id: uuid.UUID
    project_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    model_config = examples(_OUT | {"secret": _SECRET}, from_attributes=True)
    secret: str = Field(description="whsec_…: shown only in this response")


class WebhookSecret(BaseModel):
    model_config = examples({"secret": _SECRET})
    secret: str = Field(description="The new whsec_… secret; the old one also signs for 24 h")


class WebhookTestSent(BaseModel):
    model_config = examples({"event_id": "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908"})
    event_id: uuid.UUID = Field(description="The webhook.test event (its webhook-id)")


class RedeliveryQueued(BaseModel):
    model_config = examples({"delivery_id": "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"})
    delivery_id: uuid.UUID


class DeliveryOut(Schema):
    model_config = examples(
        {
            "id": "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b",
            "event_id": "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908",
            "event_type": "run.status_changed",
            "attempts": 2,
            "status": "succeeded",
            "last_response_status": 200,
            "last_error": None,
            "next_attempt_at": None,
            "created_at": _AT,
            "delivered_at": "2026-01-01T00:00:05Z",
        },
        from_attributes=True,
    )
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

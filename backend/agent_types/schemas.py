from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

from backend.agent_types.models import ProviderName
from backend.core.schemas import Money, Schema, amount, examples, integer, keep, storable, text

JSON_OBJECT_MAX_BYTES = 64 * 1024
# API.md: free-form JSON nested deeper than this is a 422 (an object or array is one level).
JSON_MAX_DEPTH = 32


def _storable_json(value: Any) -> Any:
    """Check every string (keys too) of a JSON value, its nesting and its size.

    Iterative: a deep value must not exhaust the stack here, nor later where it is serialized
    (which is what a depth beyond JSON_MAX_DEPTH would risk).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            storable(item)
        elif isinstance(item, dict | list):
            if depth > JSON_MAX_DEPTH:
                raise ValueError(f"must not be nested deeper than {JSON_MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    if len(json.dumps(value)) > JSON_OBJECT_MAX_BYTES:
        raise ValueError(f"must be at most {JSON_OBJECT_MAX_BYTES} bytes of JSON")
    return value


# Every free-form JSON field of a request (run metadata, agent memory, agent type config).
JSON_RULES = (
    f"any JSON object of at most 64 KiB, nested at most {JSON_MAX_DEPTH} levels, "
    "with no NUL in any key or string"
)
JsonObject = Annotated[
    dict[str, Any], AfterValidator(_storable_json), Field(description=f"A{JSON_RULES[1:]}")
]
Name = text(200, min_length=1, strip=True)
Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", min_length=1, max_length=100)
]
ModelName = text(200, min_length=1, strip=True)


Rate = amount(1_000_000)
Temperature = Annotated[float, Field(ge=0, le=2, strict=True)]
MaxTokens = integer(ge=1, le=1_000_000)
TimeoutSeconds = integer(ge=1, le=3600)
MaxRetries = integer(ge=0, le=20)
FallbackModels = Annotated[list[ModelName], Field(max_length=10)]


class Pricing(BaseModel):
    """USD per million tokens; overrides the bundled price table for this type."""

    model_config = ConfigDict(extra="forbid")
    input_per_mtok_usd: Rate
    output_per_mtok_usd: Rate
    cache_read_per_mtok_usd: Rate | None = None
    cache_write_per_mtok_usd: Rate | None = None


class PricingOut(BaseModel):
    input_per_mtok_usd: Money
    output_per_mtok_usd: Money
    cache_read_per_mtok_usd: Money | None = None
    cache_write_per_mtok_usd: Money | None = None


class FakeConfig(BaseModel):
    """`config` of the offline `fake` provider; strict types, unknown keys refused (typos)."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: (
        Annotated[float, Field(ge=0, le=600_000, strict=True, allow_inf_nan=False)] | None
    ) = None
    fail_times: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    fail_permanently: StrictBool | None = None
    chunks: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None


_EXAMPLE: dict[str, Any] = {
    "name": "Echo",
    "slug": "echo",
    "provider": "fake",
    "model": "fake-echo",
    "system_prompt": "You repeat what you are told.",
    "config": {"latency_ms": 0, "chunks": 4},
}


# `config` is free-form except for the `fake` provider, whose keys and types are known.
_FAKE_CONFIG: dict[str, Any] = {
    "if": {"properties": {"provider": {"const": "fake"}}},
    "then": {"properties": {"config": FakeConfig.model_json_schema()}},
}


class AgentTypeCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [_EXAMPLE], **_FAKE_CONFIG}
    )
    name: Name
    slug: Slug
    description: text(5000) | None = None
    provider: ProviderName
    model: ModelName
    system_prompt: text(100_000) = ""
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    fallback_models: FallbackModels = []
    timeout_seconds: TimeoutSeconds = 300
    max_retries: MaxRetries = 3
    pricing: Pricing | None = None
    config: JsonObject = {}
    is_active: StrictBool = True


class AgentTypeUpdate(BaseModel):
    """Fields left out keep their value; null clears the nullable ones."""

    model_config = examples({"is_active": False}, extra="forbid")
    name: Name = keep()
    slug: Slug = keep()
    description: text(5000) | None = None
    provider: ProviderName = keep()
    model: ModelName = keep()
    system_prompt: text(100_000) = keep()
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    fallback_models: FallbackModels = keep()
    timeout_seconds: TimeoutSeconds = keep()
    max_retries: MaxRetries = keep()
    pricing: Pricing | None = None
    config: JsonObject = keep()
    is_active: StrictBool = keep()


class AgentTypeOut(Schema):
    model_config = examples(
        {
            "id": "6f1c2a5e-3b7d-4c1e-9a0b-2d4e6f8a1c3e",
            **_EXAMPLE,
            "description": None,
            "temperature": None,
            "max_tokens": None,
            "fallback_models": [],
            "timeout_seconds": 300,
            "max_retries": 3,
            "pricing": None,
            "is_active": True,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    provider: ProviderName
    model: str
    system_prompt: str
    temperature: float | None
    max_tokens: int | None
    fallback_models: list[str]
    timeout_seconds: int
    max_retries: int
    pricing: PricingOut | None
    config: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from backend.agent_types.models import ProviderName
from backend.core.schemas import Money, Schema

JSON_OBJECT_MAX_BYTES = 64 * 1024
# API.md: free-form JSON nested deeper than this is a 422 (an object or array is one level).
JSON_MAX_DEPTH = 32


def _storable(value: str) -> str:
    # Postgres text and JSONB refuse NUL and lone surrogates: refuse them here (422, not 500).
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode") from None
    return value


def _storable_json(value: Any) -> Any:
    """Check every string (keys too) of a JSON value, its nesting and its size.

    Iterative: a deep value must not exhaust the stack here, nor later where it is serialized
    (which is what a depth beyond JSON_MAX_DEPTH would risk).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _storable(item)
        elif isinstance(item, dict | list):
            if depth > JSON_MAX_DEPTH:
                raise ValueError(f"must not be nested deeper than {JSON_MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    if len(json.dumps(value)) > JSON_OBJECT_MAX_BYTES:
        raise ValueError(f"must be at most {JSON_OBJECT_MAX_BYTES} bytes of JSON")
    return value


def text(max_length: int, *, min_length: int = 0, strip: bool = False) -> Any:
    """A bounded string Postgres can store."""
    constraints = StringConstraints(
        strip_whitespace=strip, min_length=min_length, max_length=max_length
    )
    return Annotated[str, constraints, AfterValidator(_storable)]


# Every free-form JSON field of a request (run metadata, agent memory, agent type config).
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]
Name = text(200, min_length=1, strip=True)
Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", min_length=1, max_length=100)
]
ModelName = text(200, min_length=1, strip=True)


Rate = Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=6, allow_inf_nan=False)]


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


_EXAMPLE = {
    "name": "Echo",
    "slug": "echo",
    "provider": "fake",
    "model": "fake-echo",
    "system_prompt": "You repeat what you are told.",
    "config": {"latency_ms": 0, "chunks": 4},
}


class AgentTypeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})
    name: Name
    slug: Slug
    description: text(5000) | None = None
    provider: ProviderName
    model: ModelName
    system_prompt: text(100_000) = ""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    fallback_models: Annotated[list[ModelName], Field(max_length=10)] = []
    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 300
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    pricing: Pricing | None = None
    config: JsonObject = {}
    is_active: bool = True


_NOT_NULL = {
    "name",
    "slug",
    "provider",
    "model",
    "system_prompt",
    "fallback_models",
    "timeout_seconds",
    "max_retries",
    "config",
    "is_active",
}


class AgentTypeUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"is_active": False}]}
    )
    name: Name | None = None
    slug: Slug | None = None
    description: text(5000) | None = None
    provider: ProviderName | None = None
    model: ModelName | None = None
    system_prompt: text(100_000) | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    fallback_models: Annotated[list[ModelName], Field(max_length=10)] | None = None
    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] | None = None
    pricing: Pricing | None = None
    config: JsonObject | None = None
    is_active: bool | None = None

    @model_validator(mode="after")
    def _required_not_null(self) -> AgentTypeUpdate:
        nulls = sorted(f for f in self.model_fields_set & _NOT_NULL if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class AgentTypeOut(Schema):
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

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from backend.agent_types.models import ProviderName
from backend.core.schemas import Money, Schema, amount, examples, integer, keep, storable, text
from backend.webhooks import urls

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
MaxSteps = integer(ge=1, le=100)
ToolTimeoutSeconds = integer(ge=1, le=3600)
ActionTimeoutSeconds = integer(ge=1, le=604_800)


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


MASK = "***"
SEPARATOR = "__"  # offered server tools are named <server>__<tool>
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_SERVERS = 16
MAX_HEADERS = 32

ToolName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _server_name(value: str) -> str:
    if SEPARATOR in value:
        raise ValueError(f"must not contain '{SEPARATOR}' (it separates server and tool names)")
    return value


ServerName = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    AfterValidator(_server_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "not": {"pattern": SEPARATOR}}),
]


def _input_schema(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("type") != "object":
        raise ValueError('must be a JSON Schema of an object ("type": "object")')
    checker = validator_for(value, default=Draft202012Validator)
    try:
        checker.check_schema(value)
    except SchemaError as exc:
        where = "".join(f"[{p!r}]" for p in exc.path)
        raise ValueError(f"is not a valid JSON Schema: {exc.message} (at {where or '/'})") from None
    return value


def _names(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("must not name a tool twice")
    return values


ToolNames = Annotated[list[ToolName], Field(max_length=256), AfterValidator(_names)]
# An HTTP header: a token name, and a value of visible ASCII, spaces and tabs.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")]
HeaderValue = Annotated[str, StringConstraints(pattern=r"^[\t\x20-\x7e]*$", max_length=8192)]


class ClientTool(BaseModel):
    """A tool the caller executes: its outputs come back through POST …/tool-outputs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "lookup",
                    "description": "Look a customer up by email",
                    "input_schema": {
                        "type": "object",
                        "properties": {"email": {"type": "string"}},
                        "required": ["email"],
                    },
                }
            ]
        },
    )
    name: ToolName
    description: text(10_000) = ""
    input_schema: Annotated[
        dict[str, Any], AfterValidator(_storable_json), AfterValidator(_input_schema)
    ] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description='A JSON Schema with "type": "object" (the arguments the model must send)',
        json_schema_extra={"properties": {"type": {"const": "object"}}, "required": ["type"]},
    )


class McpServerBase(BaseModel):
    name: ServerName
    url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2000)]
    allowed_tools: ToolNames | None = Field(
        None, description="The server's tools offered to the model (null: all of them)"
    )
    require_approval: Literal["never", "always"] | ToolNames = Field(
        "never", description='"never", "always", or the tools (as the server names them) to approve'
    )


class McpServer(McpServerBase):
    """An MCP server (streamable HTTP) whose tools the worker calls."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "demo",
                    "url": "http://127.0.0.1:8765/mcp",
                    "headers": {"Authorization": "Bearer s3cr3t"},
                    "allowed_tools": ["add", "word_count"],
                    "require_approval": ["add"],
                }
            ]
        },
    )
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)] = Field(
        default_factory=dict,
        json_schema_extra={"additionalProperties": False},
        description=f'Sent to the server; write-only (read back as "{MASK}", which an update '
        "may send to keep the stored value)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        urls.check_form(value)  # UrlRefused is a ValueError: a 422 on this field
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len({name.lower() for name in value}) != len(value):
            raise ValueError("must not name a header twice (names are case-insensitive)")
        return value

    @model_validator(mode="after")
    def _approvals_offered(self) -> McpServer:
        approval, allowed = self.require_approval, self.allowed_tools
        if isinstance(approval, list) and allowed is not None:
            if missing := [name for name in approval if name not in allowed]:
                raise ValueError(f"require_approval names tools not in allowed_tools: {missing}")
        return self


class ClientToolOut(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class McpServerOut(McpServerBase):
    headers: dict[str, str] = Field(description=f'Every value shown as "{MASK}"')

    @field_validator("headers", mode="before")
    @classmethod
    def _masked(cls, value: dict[str, Any]) -> dict[str, str]:
        return dict.fromkeys(value, MASK)


class FakeToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ToolName
    arguments: JsonObject | None = None


class FakeTextTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr


class FakeToolCallsTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_calls: Annotated[list[FakeToolCall], Field(min_length=1, max_length=MAX_TOOLS)]


class FakeConfig(BaseModel):
    """`config` of the offline `fake` provider; strict types, unknown keys refused (typos).
    The provider's own FakeConfig.parse (backend/runs/providers/fake.py) has the last word."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: (
        Annotated[float, Field(ge=0, le=600_000, strict=True, allow_inf_nan=False)] | None
    ) = None
    fail_times: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    fail_permanently: StrictBool | None = None
    chunks: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    script: list[FakeTextTurn | FakeToolCallsTurn] | None = Field(
        None, description="One turn per model step: a text answer, or tool calls"
    )


_EXAMPLE: dict[str, Any] = {
    "name": "Echo",
    "slug": "echo",
    "provider": "fake",
    "model": "fake-echo",
    "system_prompt": "You repeat what you are told.",
    "config": {"latency_ms": 0, "chunks": 4},
}


Tools = Annotated[list[ClientTool], Field(max_length=MAX_TOOLS)]
McpServers = Annotated[list[McpServer], Field(max_length=MAX_SERVERS)]


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with its local `$ref`s replaced by their definitions (none is recursive)."""
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inlined(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}


# `config` is free-form except for the `fake` provider, whose keys and types are known. Its
# schema is inlined: it sits in an `if`/`then`, where `$ref`s to its own `$defs` would dangle.
_FAKE_SCHEMA = FakeConfig.model_json_schema()
_FAKE_CONFIG: dict[str, Any] = {
    "if": {"properties": {"provider": {"const": "fake"}}},
    "then": {"properties": {"config": _inlined(_FAKE_SCHEMA, _FAKE_SCHEMA.get("$defs", {}))}},
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
    tools: Tools = []
    mcp_servers: McpServers = []
    max_steps: MaxSteps = 16
    tool_timeout_seconds: ToolTimeoutSeconds = 60
    action_timeout_seconds: ActionTimeoutSeconds = 3600
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
    tools: Tools = keep("Replaces the list")
    mcp_servers: McpServers = keep(
        f'Replaces the list; a header value "{MASK}" keeps the value stored for the same'
        " server and header name"
    )
    max_steps: MaxSteps = keep()
    tool_timeout_seconds: ToolTimeoutSeconds = keep()
    action_timeout_seconds: ActionTimeoutSeconds = keep()
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
            "tools": [
                {
                    "name": "lookup",
                    "description": "Look a customer up by email",
                    "input_schema": {"type": "object", "properties": {"email": {"type": "string"}}},
                }
            ],
            "mcp_servers": [
                {
                    "name": "demo",
                    "url": "http://127.0.0.1:8765/mcp",
                    "headers": {"Authorization": MASK},
                    "allowed_tools": None,
                    "require_approval": "never",
                }
            ],
            "max_steps": 16,
            "tool_timeout_seconds": 60,
            "action_timeout_seconds": 3600,
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
    tools: list[ClientToolOut]
    mcp_servers: list[McpServerOut]
    max_steps: int = Field(description="Model steps per run")
    tool_timeout_seconds: int = Field(description="Per server tool call")
    action_timeout_seconds: int = Field(description="How long a run may wait for an answer")
    is_active: bool
    created_at: datetime
    updated_at: datetime

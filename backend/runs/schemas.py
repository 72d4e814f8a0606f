from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from backend.agent_types.models import ProviderName
from backend.agent_types.schemas import JsonObject, Money, text
from backend.core.errors import ErrorCode
from backend.core.schemas import Schema, examples, integer
from backend.runs.models import Run, RunStatus

RunInput = text(100_000, min_length=1)
MAX_OUTPUT_CHARS = 100_000  # a tool output submitted by the caller
# Per-attempt limit; the same bound as an agent type's timeout_seconds.
MAX_TIMEOUT_SECONDS = 3600
MAX_WAIT_SECONDS = 300


class RunCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"input": "Summarize ticket #42", "metadata": {"ticket": 42}}]
        },
    )
    input: RunInput
    metadata: JsonObject = {}
    timeout_seconds: integer(ge=1, le=MAX_TIMEOUT_SECONDS) | None = Field(
        None,
        description="Per-attempt timeout; defaults to the agent type's timeout_seconds",
    )


# What a `requires_action` run waits for: outputs of client tools, or approvals of server tools.
ActionType = Literal["submit_tool_outputs", "approve_tool_calls"]


class RunError(BaseModel):
    code: str
    message: str


class RunUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    total_tokens: int
    cost_usd: Money = Field(description="Known cost; a lower bound when cost_unknown")
    cost_unknown: bool = Field(description="Some call's model has no known price")


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class RequiredAction(BaseModel):
    """What a `requires_action` run waits for; also the `requires_action` event."""

    model_config = examples(
        {
            "type": "submit_tool_outputs",
            "tool_calls": [{"id": "call_2", "name": "open_ticket", "arguments": {"id": 42}}],
            "expires_at": "2026-01-01T00:10:00Z",
        }
    )
    type: ActionType
    tool_calls: list[ToolCall] = Field(description="The calls awaiting an answer, in order")
    expires_at: datetime = Field(description="Unanswered by then, the run fails (action_expired)")


class RunOut(Schema):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0d6f3c8e-8a55-4c51-9a3e-5b3f4c1c2d7a",
                    "project_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
                    "agent_id": "6f1c2a5e-3b7d-4c1e-9a0b-2d4e6f8a1c3e",
                    "status": "succeeded",
                    "input": "hello",
                    "output": "echo: hello",
                    "error": None,
                    "attempt": 1,
                    "model": "fake-1",
                    "provider": "fake",
                    "usage": {
                        "input_tokens": 1,
                        "output_tokens": 2,
                        "cache_read_tokens": 0,
                        "cache_write_tokens": 0,
                        "total_tokens": 3,
                        "cost_usd": 0.0,
                        "cost_unknown": False,
                    },
                    "steps": 1,
                    "required_action": None,
                    "metadata": {},
                    "created_at": "2025-01-01T00:00:00Z",
                    "started_at": "2025-01-01T00:00:00.010Z",
                    "finished_at": "2025-01-01T00:00:00.020Z",
                }
            ]
        },
    )
    id: uuid.UUID
    project_id: uuid.UUID
    agent_id: uuid.UUID
    status: RunStatus
    input: str
    output: str | None
    error: RunError | None
    attempt: int = Field(description="Attempts started so far (1 on the first)")
    model: str
    provider: ProviderName
    usage: RunUsage = Field(description="Every attempt's provider calls, each counted once")
    steps: int = Field(description="Steps so far (model and tool steps; the next step's index)")
    required_action: RequiredAction | None = Field(
        description="While `requires_action`: what the run waits for (else null)"
    )
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _from_run(cls, value: Any) -> Any:
        # `Run.metadata` is SQLAlchemy's MetaData: read the column attribute instead.
        return run_fields(value) if isinstance(value, Run | RunRow) else value


class RunRow:
    """A `runs` row fetched as a mapping (the worker's SQL results), read like a Run."""

    __slots__ = ("_row",)

    def __init__(self, row: Mapping[str, Any]) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        try:
            return self._row["metadata" if name == "run_metadata" else name]
        except KeyError:
            raise AttributeError(name) from None


def run_fields(run: Run | RunRow) -> dict[str, Any]:
    tokens = (run.input_tokens, run.output_tokens, run.cache_read_tokens, run.cache_write_tokens)
    return {
        "id": run.id,
        "project_id": run.project_id,
        "agent_id": run.agent_id,
        "status": run.status,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "attempt": run.attempt,
        "model": run.model,
        "provider": run.provider,
        "usage": {
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cache_read_tokens": run.cache_read_tokens,
            "cache_write_tokens": run.cache_write_tokens,
            "total_tokens": sum(tokens),
            "cost_usd": run.cost_usd,
            "cost_unknown": run.cost_unknown,
        },
        "steps": run.steps,
        "required_action": run.required_action,
        "metadata": run.run_metadata,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def run_json(run: Run | RunRow) -> dict[str, Any]:
    """The run object as JSON-ready data (stream `end` events, replayed responses)."""
    return RunOut.model_validate(run).model_dump(mode="json")


# The events of GET …/runs/{run_id}/events (API.md "Streaming"); the WebSocket sends the same.
class StatusEvent(BaseModel):
    model_config = examples({"status": "running", "attempt": 1})
    status: RunStatus
    attempt: int | None = Field(None, description="On `running`: the attempt that started")


class DeltaEvent(BaseModel):
    model_config = examples({"text": "echo: hel"})
    text: str = Field(description="The next piece of the output")


class UsageEvent(BaseModel):
    model_config = examples(
        {"input_tokens": 12, "output_tokens": 40, "total_tokens": 52, "cost_usd": 0.00066}
    )
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float


class ToolCallEvent(BaseModel):
    model_config = examples(
        {"id": "call_1", "name": "search", "arguments": {"q": "agentry"}, "executor": "server"}
    )
    id: str
    name: str
    arguments: dict[str, Any]
    executor: Literal["server", "client"]


class ToolResultEvent(BaseModel):
    model_config = examples({"tool_call_id": "call_1", "output": "3 results", "is_error": False})
    tool_call_id: str
    output: str
    is_error: bool


RUN_EVENTS: dict[str, type[BaseModel]] = {
    "status": StatusEvent,
    "delta": DeltaEvent,
    "usage": UsageEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
    "requires_action": RequiredAction,
    "end": RunOut,
}
EVENT_ID = r"^\d{1,20}-\d{1,20}$"


def _sse_event(name: str, model: type[BaseModel]) -> dict[str, Any]:
    data = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "type": "object",
        "title": f"{name} event",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "pattern": EVENT_ID},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
                "description": f"JSON: {model.__name__}",
            },
        },
    }


EVENT_STREAM_RESPONSE = {
    "description": "The run's events; each `data:` is one JSON object, per `event:` name",
    "content": {
        "text/event-stream": {
            "schema": {"oneOf": [_sse_event(name, model) for name, model in RUN_EVENTS.items()]},
            "example": (
                'id: 1712345678901-0\nevent: status\ndata: {"status": "queued"}\n\n'
                'id: 1712345678950-0\nevent: delta\ndata: {"text": "echo: hel"}\n\n'
            ),
        }
    },
}


# Answers to a required action (POST …/tool-outputs, …/approvals, and the WebSocket).
MAX_ANSWERS = 128
ToolCallId = text(200, min_length=1)


class ToolOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_call_id: ToolCallId
    output: text(MAX_OUTPUT_CHARS) = Field(description="What the tool returned, as text")
    is_error: StrictBool = Field(False, description="The tool failed: `output` says why")


class ToolOutputs(BaseModel):
    model_config = examples(
        {"tool_outputs": [{"tool_call_id": "call_2", "output": "ticket 42: open"}]},
        extra="forbid",
    )
    tool_outputs: Annotated[list[ToolOutput], Field(min_length=1, max_length=MAX_ANSWERS)] = Field(
        description="One per pending tool call, each exactly once"
    )


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_call_id: ToolCallId
    approve: StrictBool
    message: text(2000) | None = Field(
        None, description='On a denial, told to the model: "denied: <message>"'
    )


class Approvals(BaseModel):
    model_config = examples(
        {"decisions": [{"tool_call_id": "call_1", "approve": False, "message": "not today"}]},
        extra="forbid",
    )
    decisions: Annotated[list[Decision], Field(min_length=1, max_length=MAX_ANSWERS)] = Field(
        description="One per pending tool call, each exactly once"
    )


class Approval(BaseModel):
    approved: bool
    message: str | None
    actor_user_id: uuid.UUID | None = Field(description="Who decided")
    actor_api_key_id: uuid.UUID | None = Field(description="Through this API key, if any")


class StepOut(Schema):
    """A model step (provider … usage) or a tool step (tool_call_id … approval); the other
    kind's fields are null."""

    model_config = examples(
        {
            "id": "2b0f6f0e-7d0c-4f7e-9f57-1f2f3e4d5c6b",
            "run_id": "0d6f3c8e-8a55-4c51-9a3e-5b3f4c1c2d7a",
            "index": 1,
            "kind": "tool",
            "status": "succeeded",
            "provider": None,
            "model": None,
            "attempt": 1,
            "text": None,
            "tool_calls": None,
            "usage": None,
            "tool_call_id": "call_0_0",
            "name": "lookup",
            "arguments": {"email": "a@example.com"},
            "executor": "client",
            "output": "customer 7",
            "is_error": False,
            "approval": None,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:03Z",
        }
    )
    id: uuid.UUID
    run_id: uuid.UUID
    index: int
    kind: Literal["model", "tool"]
    status: Literal["running", "succeeded", "failed"]
    provider: ProviderName | None
    model: str | None
    attempt: int
    text: str | None
    tool_calls: list[ToolCall] | None
    usage: RunUsage | None = Field(description="A model step's provider calls (every attempt)")
    tool_call_id: str | None
    name: str | None
    arguments: dict[str, Any] | None
    executor: Literal["server", "client"] | None
    output: str | None
    is_error: bool | None
    approval: Approval | None
    started_at: datetime | None
    finished_at: datetime | None


# The WebSocket at …/agents/{agent_id}/ws: a client sends RunCreate messages, or answers to a
# run's required action; the server answers with the runs' events (RUN_EVENTS), or an `error`.
class WsToolOutputs(ToolOutputs):
    model_config = examples(
        {
            "run_id": "0d6f3c8e-8a55-4c51-9a3e-5b3f4c1c2d7a",
            "tool_outputs": [{"tool_call_id": "call_2", "output": "ticket 42: open"}],
        },
        extra="forbid",
    )
    run_id: uuid.UUID


class WsApprovals(Approvals):
    model_config = examples(
        {
            "run_id": "0d6f3c8e-8a55-4c51-9a3e-5b3f4c1c2d7a",
            "decisions": [{"tool_call_id": "call_1", "approve": True}],
        },
        extra="forbid",
    )
    run_id: uuid.UUID


class WsError(BaseModel):
    code: ErrorCode
    message: str


class WsEvent(BaseModel):
    model_config = examples(
        {
            "event": "delta",
            "id": "1712345678950-0",
            "data": {"text": "echo: hel"},
            "run_id": "0d6f3c8e-8a55-4c51-9a3e-5b3f4c1c2d7a",
        },
        {"event": "error", "id": None, "data": {"code": "rate_limited", "message": "Too many"}},
    )
    event: Literal[
        "status", "delta", "usage", "tool_call", "tool_result", "requires_action", "end", "error"
    ]
    id: str | None = Field(description="The event's id in the run's stream; null on `error`")
    data: (
        StatusEvent
        | DeltaEvent
        | UsageEvent
        | ToolCallEvent
        | ToolResultEvent
        | RequiredAction
        | RunOut
        | WsError
    ) = Field(description="As the SSE event of the same name; WsError on `error`")
    run_id: uuid.UUID | None = Field(None, description="The run the event belongs to")


# (what a client may send, what the server sends)
WEBSOCKET_MESSAGES: tuple[tuple[type[BaseModel], ...], type[BaseModel]] = (
    (RunCreate, WsToolOutputs, WsApprovals),
    WsEvent,
)

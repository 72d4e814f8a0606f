"""Typed results: the API's objects with their documented fields (API.md).

Tolerant both ways: unknown fields are ignored (kept in `raw`), missing ones are None.
`raw` is the object exactly as the API answered it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self


@dataclass
class Model:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        return cls(raw=data, **{k: v for k, v in data.items() if k in names})


@dataclass
class User(Model):
    id: str | None = None
    email: str | None = None
    full_name: str | None = None
    is_active: bool | None = None
    is_superuser: bool | None = None
    created_at: str | None = None
    updated_at: str | None = None


@dataclass
class Tokens(Model):
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: str | None = None
    expires_in: int | None = None


@dataclass
class ApiKey(Model):
    id: str | None = None
    name: str | None = None
    prefix: str | None = None
    key: str | None = None  # only in the answer to create
    project_id: str | None = None
    scopes: list[str] | None = None
    expires_at: str | None = None
    created_at: str | None = None
    last_used_at: str | None = None


@dataclass
class Project(Model):
    id: str | None = None
    name: str | None = None
    slug: str | None = None
    description: str | None = None
    owner_id: str | None = None
    budget: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None
    role: str | None = None


@dataclass
class AgentType(Model):
    id: str | None = None
    name: str | None = None
    slug: str | None = None
    description: str | None = None
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    fallback_models: list[str] | None = None
    timeout_seconds: float | None = None
    max_retries: int | None = None
    pricing: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    max_steps: int | None = None
    tool_timeout_seconds: float | None = None
    action_timeout_seconds: float | None = None
    is_active: bool | None = None
    created_at: str | None = None
    updated_at: str | None = None


@dataclass
class Agent(Model):
    id: str | None = None
    project_id: str | None = None
    agent_type_id: str | None = None
    name: str | None = None
    status: str | None = None
    current_task: str | None = None
    short_term_memory: dict[str, Any] | None = None
    long_term_memory_ref: str | None = None
    session_id: str | None = None
    last_activity_at: str | None = None
    terminated_at: str | None = None
    tasks_completed: int | None = None
    tokens_used: int | None = None
    cost_incurred: float | None = None
    pending_runs: int | None = None
    agent_type_name: str | None = None
    agent_type_slug: str | None = None
    project_name: str | None = None
    project_slug: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


@dataclass
class Run(Model):
    id: str | None = None
    project_id: str | None = None
    agent_id: str | None = None
    status: str | None = None
    input: str | None = None
    output: str | None = None
    error: dict[str, Any] | None = None
    attempt: int | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Any] | None = None
    steps: int | None = None
    required_action: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class Step(Model):
    id: str | None = None
    run_id: str | None = None
    index: int | None = None
    kind: str | None = None
    status: str | None = None
    provider: str | None = None
    model: str | None = None
    attempt: int | None = None
    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    arguments: Any = None
    executor: str | None = None
    output: str | None = None
    is_error: bool | None = None
    approval: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass
class Webhook(Model):
    id: str | None = None
    project_id: str | None = None
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
    secret: str | None = None  # only in the answer to create
    created_at: str | None = None
    updated_at: str | None = None


@dataclass
class Delivery(Model):
    id: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    attempts: int | None = None
    status: str | None = None
    last_response_status: int | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None
    created_at: str | None = None
    delivered_at: str | None = None


@dataclass
class Metrics(Model):
    totals: dict[str, Any] | None = None
    by_agent: list[dict[str, Any]] | None = None
    by_model: list[dict[str, Any]] | None = None
    series: list[dict[str, Any]] | None = None
    budget: dict[str, Any] | None = None


@dataclass
class AgentMetrics(Model):
    total_instances: int | None = None
    active_instances: int | None = None
    idle_instances: int | None = None
    total_tasks_completed: int | None = None
    total_tokens_used: int | None = None
    total_cost_incurred: float | None = None


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a run: `event` name, stream `id`, decoded JSON `data`."""

    event: str
    id: str | None
    data: Any

    def as_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "data": self.data}

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.agent_types.schemas import JsonObject, Name, text
from backend.agents.models import AgentStatus
from backend.core.schemas import Money, Schema

Task = text(20_000)
MemoryRef = text(500)
SessionId = text(200)


class AgentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "agent_type_id": "6f1c2a5e-3b7d-4c1e-9a0b-2d4e6f8a1c3e",
                    "name": "triage-bot",
                    "current_task": "Sort incoming tickets",
                }
            ]
        },
    )
    agent_type_id: uuid.UUID
    name: Name
    project_id: uuid.UUID | None = Field(
        None, description="Optional; must equal the path's project id when given"
    )
    current_task: Task | None = None
    short_term_memory: JsonObject = {}


_NOT_NULL = {"name", "status", "short_term_memory"}


class AgentUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "paused"}, {"current_task": "Summarize"}]},
    )
    name: Name | None = None
    status: AgentStatus | None = Field(
        None, description="A change obeys the lifecycle table (409 invalid_transition otherwise)"
    )
    current_task: Task | None = None
    short_term_memory: JsonObject | None = None
    long_term_memory_ref: MemoryRef | None = None
    session_id: SessionId | None = None

    @model_validator(mode="after")
    def _required_not_null(self) -> AgentUpdate:
        nulls = sorted(f for f in self.model_fields_set & _NOT_NULL if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class AgentOut(Schema):
    id: uuid.UUID
    project_id: uuid.UUID
    agent_type_id: uuid.UUID
    name: str
    status: AgentStatus
    current_task: str | None
    short_term_memory: dict[str, Any]
    long_term_memory_ref: str | None
    session_id: str | None
    last_activity_at: datetime | None
    terminated_at: datetime | None
    tasks_completed: int
    tokens_used: int
    cost_incurred: Money
    pending_runs: int = Field(description="Queued and running runs")
    agent_type_name: str
    agent_type_slug: str
    project_name: str
    project_slug: str
    created_at: datetime
    updated_at: datetime


class AgentMetrics(BaseModel):
    total_instances: int
    active_instances: int = Field(description="Agents working or waiting")
    idle_instances: int
    total_tasks_completed: int
    total_tokens_used: int
    total_cost_incurred: Money


class AgentEventOut(Schema):
    id: uuid.UUID
    from_status: AgentStatus
    to_status: AgentStatus
    actor_user_id: uuid.UUID | None
    actor_api_key_id: uuid.UUID | None
    run_id: uuid.UUID | None
    reason: str | None
    created_at: datetime

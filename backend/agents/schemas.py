from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backend.agent_types.schemas import JSON_RULES, JsonObject, Name, text
from backend.agents.models import AgentStatus
from backend.core.schemas import Money, Schema, examples, keep

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
        None, description="Optional; must equal the path's project id (else 422)"
    )
    current_task: Task | None = None
    short_term_memory: JsonObject = {}


class AgentUpdate(BaseModel):
    """Fields left out keep their value; null clears the nullable ones."""

    model_config = examples({"status": "paused"}, {"current_task": "Summarize"}, extra="forbid")
    name: Name = keep()
    status: AgentStatus = keep("A change obeys the lifecycle table (409 invalid_transition)")
    current_task: Task | None = None
    short_term_memory: Annotated[
        JsonObject | None, AfterValidator(lambda memory: {} if memory is None else memory)
    ] = Field(None, description=f"Replaces the memory ({JSON_RULES}); null clears it (to {{}})")
    long_term_memory_ref: MemoryRef | None = None
    session_id: SessionId | None = None


_AT = "2026-01-01T00:00:00Z"
_METRICS = {
    "total_instances": 3,
    "active_instances": 1,
    "idle_instances": 2,
    "total_tasks_completed": 42,
    "total_tokens_used": 51200,
    "total_cost_incurred": 0.3184,
}


class AgentOut(Schema):
    model_config = examples(
        {
            "id": "5b1f0c7e-3a51-4c1e-9d5a-0d7f3e2c9b11",
            "project_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
            "agent_type_id": "6f1c2a5e-3b7d-4c1e-9a0b-2d4e6f8a1c3e",
            "name": "triage-bot",
            "status": "idle",
            "current_task": "Sort incoming tickets",
            "short_term_memory": {},
            "long_term_memory_ref": None,
            "session_id": None,
            "last_activity_at": None,
            "terminated_at": None,
            "tasks_completed": 0,
            "tokens_used": 0,
            "cost_incurred": 0.0,
            "pending_runs": 0,
            "agent_type_name": "Echo",
            "agent_type_slug": "echo",
            "project_name": "Support bots",
            "project_slug": "support-bots",
            "created_at": _AT,
            "updated_at": _AT,
        }
    )
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
    model_config = examples(_METRICS)
    total_instances: int
    active_instances: int = Field(description="Agents working or waiting")
    idle_instances: int
    total_tasks_completed: int
    total_tokens_used: int
    total_cost_incurred: Money


class AgentEventOut(Schema):
    model_config = examples(
        {
            "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
            "from_status": "idle",
            "to_status": "paused",
            "actor_user_id": "8d7e2f4a-1b3c-4d5e-9f60-7a8b9c0d1e2f",
            "actor_api_key_id": None,
            "run_id": None,
            "reason": "paused by a user",
            "created_at": _AT,
        }
    )
    id: uuid.UUID
    from_status: AgentStatus
    to_status: AgentStatus
    actor_user_id: uuid.UUID | None
    actor_api_key_id: uuid.UUID | None
    run_id: uuid.UUID | None
    reason: str | None
    created_at: datetime

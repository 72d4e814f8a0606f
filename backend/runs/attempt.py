"""What a worker holds while it runs attempts (shared by the executor, the conclusions and the
heartbeat): the process's state, a claimed run, an attempt in progress and its calls."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.runs import dispatch, pipeline, streams
from backend.runs.providers import Completion, CompletionRequest, Message, ProviderError, Usage
from backend.tools.mcp import McpTools
from backend.usage.service import BudgetState


@dataclass
class WorkerState:
    """Per worker process: what the executor, the heartbeat and recovery share."""

    sessionmaker: async_sessionmaker[AsyncSession]
    dispatcher: dispatch.Dispatcher
    settings: Settings
    worker_id: str
    db: pipeline.Pipeline  # claims and conclusions
    # The runs this worker holds, from their claim until their conclusion has committed (which
    # may wait for Postgres): the heartbeat keeps them, so the reaper leaves them alone.
    held: set[uuid.UUID] = field(default_factory=set)
    # run id -> the task calling its provider; the heartbeat cancels it when the run is taken away.
    active: dict[uuid.UUID, asyncio.Task[Any]] = field(default_factory=dict)
    mcp: McpTools = field(default_factory=McpTools)  # MCP sessions and tool lists
    redis_ok: bool = True  # the last queue poll or heartbeat reached Redis
    sweep_after: uuid.UUID | None = None  # the sweeper's place among the agents


@dataclass(frozen=True)
class Claimed:
    run_id: uuid.UUID
    project_id: uuid.UUID
    agent_id: uuid.UUID
    attempt: int  # this attempt's number, from 1
    retries: int  # transient-failure retries before this attempt
    input: str
    timeout: float
    max_retries: int
    provider: str
    models: list[str]  # the primary, then the fallbacks
    request: CompletionRequest
    pricing: dict[str, Any] | None
    budget: BudgetState | None  # the project's budget at claim time (None: no budget)
    history: list[Message]  # the agent's conversation before this run
    tools: list[dict[str, Any]]  # the type's client tools
    mcp_servers: list[dict[str, Any]]  # the type's MCP servers, as stored
    max_steps: int
    tool_timeout: float
    action_timeout: float
    steps: list[dict[str, Any]]  # the run's committed steps (a resumed run's are not empty)


@dataclass(frozen=True)
class Call:
    model: str
    usage: Usage
    succeeded: bool
    error: dict[str, str] | None = None
    step: int = 0  # the model step's index within the run


@dataclass
class Attempt:
    """An attempt in progress: what it has done since its last commit (`calls`, `steps`, which
    its next conclusion or checkpoint writes) and how it ends (a completion, an error, or a
    required action)."""

    claimed: Claimed
    events: streams.RunEvents
    calls: list[Call] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    committed: list[dict[str, Any]] = field(default_factory=list)  # the run's steps so far
    budget: BudgetState | None = None
    completion: Completion | None = None
    model: str | None = None
    error: ProviderError | None = None
    timed_out: bool = False
    action: dict[str, Any] | None = None  # the required action to park the run with
    messages: list[Message] = field(default_factory=list)  # the run's, for its conversation

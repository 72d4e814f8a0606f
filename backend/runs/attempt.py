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
from backend.runs.providers import Completion, CompletionRequest, ProviderError, Usage
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
    redis_ok: bool = True  # the last queue poll or heartbeat reached Redis
    sweep_after: uuid.UUID | None = None  # the sweeper's place among the agents


@dataclass(frozen=True)
class Claimed:
    run_id: uuid.UUID
    project_id: uuid.UUID
    agent_id: uuid.UUID
    attempt: int  # this attempt's number, from 1
    input: str
    timeout: float
    max_retries: int
    provider: str
    models: list[str]  # the primary, then the fallbacks
    request: CompletionRequest
    pricing: dict[str, Any] | None
    budget: BudgetState | None  # the project's budget at claim time (None: no budget)


@dataclass(frozen=True)
class Call:
    model: str
    usage: Usage
    succeeded: bool
    error: dict[str, str] | None = None
    step: int = 0  # the model step's index within the run


@dataclass
class Attempt:
    claimed: Claimed
    events: streams.RunEvents
    calls: list[Call] = field(default_factory=list)
    completion: Completion | None = None
    model: str | None = None
    error: ProviderError | None = None
    timed_out: bool = False

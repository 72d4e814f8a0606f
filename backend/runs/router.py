from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, WebSocket, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from backend.access import RunReader, RunWriter, rate_limit
from backend.core.db import Session, commit
from backend.core.idempotency import IdempotencyKeyHeader, Outcome, respond, run_idempotent
from backend.core.schemas import Page, Paging, error_responses
from backend.projects.dependencies import Permission, ProjectContext
from backend.runs import actions, dispatch, service, streams, websocket
from backend.runs.dependencies import HeaderCredentials, StreamReader
from backend.runs.models import FINISHED, RunStatus
from backend.runs.schemas import (
    EVENT_STREAM_RESPONSE,
    MAX_WAIT_SECONDS,
    Approvals,
    RunCreate,
    RunOut,
    StepOut,
    ToolOutputs,
    run_json,
)
from backend.runs.watch import AccessLost, Lease


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs after the app's own lifespan built engine and Redis: sessions can now dispatch.
    state = app.state
    dispatch.install(state.sessionmaker, dispatch.Dispatcher(state.redis, state.settings))
    yield


router = APIRouter(lifespan=lifespan)
_ERR = error_responses(401, 403, 404, 422, 429)
WaitQuery = Annotated[
    float | None,
    Query(ge=0, le=MAX_WAIT_SECONDS, description="Wait up to N seconds for the run to finish"),
]


@router.post(
    "/projects/{project_id}/agents/{agent_id}/runs",
    response_model=RunOut,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="submit_run",
    summary="Submit a run to an agent (queued; ?wait=N answers 200 if it ends within N s)",
    responses={
        **_ERR,
        **error_responses(402, 409),
        200: {"model": RunOut, "description": "Finished within `wait` seconds"},
    },
    dependencies=[rate_limit("runs.submit", "60/minute")],
)
async def submit_run(
    agent_id: uuid.UUID,
    body: RunCreate,
    ctx: RunWriter,
    session: Session,
    request: Request,
    credentials: HeaderCredentials,
    wait: WaitQuery = None,
    idempotency_key: IdempotencyKeyHeader = None,
):
    submit = Submit(agent_id, body, ctx, session, request, idempotency_key)
    if not wait:
        return await submit.answer()
    # A slot first: a caller at the cap gets its 429 before anything is created.
    identity = ctx.principal.identity
    lease = Lease(request, ctx.project.id, Permission.runs_write, credentials, identity)
    async with lease:
        try:
            return await submit.answer(wait, lease)
        except AccessLost as lost:
            # Access lost while waiting: the answer a new request would get (the run stays).
            raise lost.error from None


@dataclass
class Submit:
    agent_id: uuid.UUID
    body: RunCreate
    ctx: ProjectContext
    session: AsyncSession
    request: Request
    idempotency_key: str | None

    async def answer(self, wait: float = 0, lease: Lease | None = None) -> JSONResponse:
        """202 with the run; with `lease`, first wait up to `wait` s for it to end (200)."""
        ctx, session, request = self.ctx, self.session, self.request

        async def create() -> Outcome:
            run = await service.submit(session, ctx, self.agent_id, self.body)
            headers = {"Location": service.location(ctx.project.id, run.id)}
            return Outcome(202, run, headers)

        result = await run_idempotent(
            session,
            key=self.idempotency_key,
            principal=ctx.principal.identity,
            scope=f"runs.submit:{self.agent_id}",
            payload=self.body,
            create=create,
        )
        if lease is None:
            return respond(result)
        await commit(session)  # the run exists and is enqueued before we wait for it
        body: Any = result.body
        run_id = body.id if isinstance(result, Outcome) else uuid.UUID(body["id"])
        state = request.app.state
        run = await lease.run(
            service.wait_for(state.sessionmaker, state.redis, ctx.project.id, run_id, wait)
        )
        done = RunStatus(run.status) in FINISHED
        headers = {"Location": service.location(ctx.project.id, run.id)}
        return JSONResponse(run_json(run), 200 if done else 202, headers)


@router.get(
    "/projects/{project_id}/runs",
    response_model=Page[RunOut],
    operation_id="list_runs",
    summary="List the project's runs, newest first",
    responses=_ERR,
    dependencies=[rate_limit("runs.list", "120/minute")],
)
async def list_runs(
    ctx: RunReader,
    session: Session,
    paging: Paging,
    agent_id: uuid.UUID | None = None,
    status: RunStatus | None = None,
):
    items, total = await service.list_runs(session, ctx, paging, agent_id=agent_id, status=status)
    return paging.build(items, total)


@router.get(
    "/projects/{project_id}/runs/{run_id}",
    response_model=RunOut,
    operation_id="get_run",
    summary="Get a run",
    responses=_ERR,
    dependencies=[rate_limit("runs.get", "120/minute")],
)
async def get_run(run_id: uuid.UUID, ctx: RunReader, session: Session):
    return await service.get(session, ctx, run_id)


@router.post(
    "/projects/{project_id}/runs/{run_id}/cancel",
    response_model=RunOut,
    operation_id="cancel_run",
    summary="Cancel a run (queued: at once; running: its worker stops within seconds)",
    responses=_ERR,
    dependencies=[rate_limit("runs.cancel", "30/minute")],
)
async def cancel_run(run_id: uuid.UUID, ctx: RunWriter, session: Session):
    return await service.cancel(session, ctx, run_id)


@router.get(
    "/projects/{project_id}/runs/{run_id}/steps",
    response_model=Page[StepOut],
    operation_id="list_run_steps",
    summary="List a run's steps (model calls and tool calls), oldest first",
    responses=_ERR,
    dependencies=[rate_limit("runs.steps", "120/minute")],
)
async def list_run_steps(run_id: uuid.UUID, ctx: RunReader, session: Session, paging: Paging):
    return paging.build(*await service.list_steps(session, ctx, run_id, paging))


_ANSWER_ERR = {**_ERR, **error_responses(409)}


@router.post(
    "/projects/{project_id}/runs/{run_id}/tool-outputs",
    response_model=RunOut,
    operation_id="submit_tool_outputs",
    summary="Answer a run waiting for client tool outputs; it is queued again",
    description=(
        "Every pending call of `required_action` (type `submit_tool_outputs`) answered exactly "
        "once and no other id, else 422 (`field`: `tool_outputs`); 409 `invalid_transition` "
        "when the run is not waiting for tool outputs (or its action expired). Honors "
        "`Idempotency-Key`."
    ),
    responses=_ANSWER_ERR,
    dependencies=[rate_limit("runs.tool_outputs", "60/minute")],
)
async def submit_tool_outputs(
    run_id: uuid.UUID,
    body: ToolOutputs,
    ctx: RunWriter,
    session: Session,
    idempotency_key: IdempotencyKeyHeader = None,
):
    return await _answer(session, ctx, run_id, body, "runs.tool_outputs", idempotency_key)


@router.post(
    "/projects/{project_id}/runs/{run_id}/approvals",
    response_model=RunOut,
    operation_id="approve_tool_calls",
    summary="Approve or deny the server tool calls a run waits on; it is queued again",
    description=(
        "Every pending call of `required_action` (type `approve_tool_calls`) decided exactly "
        "once and no other id, else 422 (`field`: `decisions`); 409 `invalid_transition` when "
        "the run is not waiting for approvals (or its action expired). Approved calls are executed by the worker; a "
        'denied one gives the model the error result `"denied: <message>"`. The audit log '
        "records who decided. Honors `Idempotency-Key`."
    ),
    responses=_ANSWER_ERR,
    dependencies=[rate_limit("runs.approvals", "60/minute")],
)
async def approve_tool_calls(
    run_id: uuid.UUID,
    body: Approvals,
    ctx: RunWriter,
    session: Session,
    idempotency_key: IdempotencyKeyHeader = None,
):
    return await _answer(session, ctx, run_id, body, "runs.approvals", idempotency_key)


async def _answer(
    session: AsyncSession,
    ctx: ProjectContext,
    run_id: uuid.UUID,
    body: ToolOutputs | Approvals,
    scope: str,
    idempotency_key: str | None,
) -> JSONResponse:
    async def create() -> Outcome:
        run = await actions.answer(session, ctx, run_id, body)
        return Outcome(200, RunOut.model_validate(run), {})

    return respond(
        await run_idempotent(
            session,
            key=idempotency_key,
            principal=ctx.principal.identity,
            scope=f"{scope}:{run_id}",
            payload=body,
            create=create,
        )
    )


@router.get(
    "/projects/{project_id}/runs/{run_id}/events",
    operation_id="stream_run_events",
    summary="Server-Sent Events of a run: status, delta, usage, tool events, then end",
    description=(
        "`text/event-stream`. Each event has an `id:` (monotonic within the run), an `event:` "
        "name and JSON `data:`. `: keep-alive` comments while the run is quiet; a run waiting "
        "for an action is not final: its stream stays open until it ends. Reconnect "
        "with `Last-Event-ID` to receive only what came after it. Accepts `?access_token=` "
        "for EventSource, which cannot send headers."
    ),
    response_class=StreamingResponse,
    responses={**_ERR, 200: EVENT_STREAM_RESPONSE},
)
async def stream_run_events(
    run_id: uuid.UUID,
    access: StreamReader,
    session: Session,
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> StreamingResponse:
    ctx = access.ctx
    await service.get(session, ctx, run_id)  # 404 before the stream starts
    state = request.app.state
    lease = Lease(
        request, ctx.project.id, Permission.runs_read, access.credentials, ctx.principal.identity
    )
    await lease.acquire()  # 429 here, before the stream starts

    async def events() -> AsyncIterator[str]:
        follow = streams.follow(
            state.redis,
            state.sessionmaker,
            ctx.project.id,
            run_id,
            last_event_id=last_event_id,
            keepalive=state.settings.SSE_KEEPALIVE_SECONDS,
        )
        try:
            async with lease:
                async for event in lease.iterate(follow):
                    yield ": keep-alive\n\n" if event is None else event.sse()
        except AccessLost:
            return  # the stream just closes: an EventSource reconnecting gets the 401/403/404

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.websocket("/projects/{project_id}/agents/{agent_id}/ws", name="agent_ws")
async def agent_ws(
    websocket_: WebSocket,
    project_id: uuid.UUID,
    agent_id: uuid.UUID,
    access_token: Annotated[str | None, Query(max_length=4096)] = None,
    api_key: Annotated[str | None, Query(max_length=256)] = None,
) -> None:
    # Non-browser clients may send the usual headers instead.
    bearer = websocket_.headers.get("authorization", "")
    token = access_token or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
    api_key = api_key or websocket_.headers.get("x-api-key")
    await websocket.serve(websocket_, project_id, agent_id, token=token, api_key=api_key)

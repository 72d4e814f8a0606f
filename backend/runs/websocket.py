"""WS /projects/{p}/agents/{a}/ws: submit runs to one agent and receive their events.

Authenticated by `?access_token=` or `?api_key=` through the same code path as the headers;
a caller who may not submit runs to the agent (RunWriter) is closed with 1008 (policy
violation). Each `{"input": …}` message (the POST body) creates a run with the same service
function as POST; that run's events follow as `{"event", "id", "data", "run_id"}` objects,
ending with `end`. `{"run_id", "tool_outputs"}` and `{"run_id", "decisions"}` answer the
required action of one of the agent's runs with the same function as the POST endpoints
(backend/runs/actions.py); that run's events from then on follow, if they did not already. Credentials are checked again for every message and every
STREAM_RECHECK_SECONDS (backend/runs/watch.py): a revoked key, a deactivated user or a removed
member closes the socket with 1008 within seconds. A caller's open sockets count towards
MAX_STREAMS_PER_CALLER (beyond it: closed with 1013). Bad messages answer an `error` event and keep the socket.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import structlog
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from sqlalchemy import select

from backend.agents.models import Agent
from backend.core.db import commit
from backend.core.errors import AppError, RateLimited
from backend.projects.dependencies import Permission, ProjectContext
from backend.runs import actions, service, streams
from backend.runs.dependencies import Credentials, authorize
from backend.runs.schemas import RunCreate, WsApprovals, WsToolOutputs
from backend.runs.watch import AccessLost, Lease

log = structlog.get_logger()

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
MAX_LIVE_RUNS = 100  # runs followed at once on one connection


class _Refused(Exception):
    """The caller may not (or no longer, or not now) use this socket."""

    def __init__(self, reason: str, *, code: int = POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.code = code


class AgentSocket:
    def __init__(
        self,
        ws: WebSocket,
        project_id: uuid.UUID,
        agent_id: uuid.UUID,
        token: str | None,
        api_key: str | None,
    ) -> None:
        self.ws, self.project_id, self.agent_id = ws, project_id, agent_id
        self.token, self.api_key = token, api_key
        self.state = ws.app.state
        self.lock = asyncio.Lock()
        self.followers: dict[uuid.UUID, asyncio.Task[None]] = {}  # by run

    async def authorize(self, session: Any) -> ProjectContext:
        try:
            return await authorize(
                self.ws,
                session,
                self.project_id,
                Permission.runs_write,
                token=self.token,
                api_key=self.api_key,
            )
        except AppError as exc:
            raise _Refused(exc.message) from None

    async def open(self) -> Lease:
        """Authorize, count the connection, check the agent; the lease to hold while open."""
        async with self.state.sessionmaker() as session:
            ctx = await self.authorize(session)
            verdict = await self.state.limiter.hit("runs.ws", "30/minute", ctx.principal.identity)
            if verdict is not None and not verdict.allowed:
                raise _Refused("Rate limit exceeded; retry later", code=TRY_AGAIN_LATER)
            found = await session.scalar(
                select(Agent.id).where(
                    Agent.id == self.agent_id, Agent.project_id == self.project_id
                )
            )
            if found is None:
                raise _Refused(f"Agent {self.agent_id} not found")
            await commit(session)
        credentials = Credentials(self.token, self.api_key)
        identity = ctx.principal.identity
        return Lease(self.ws, self.project_id, Permission.runs_write, credentials, identity)

    async def loop(self) -> None:
        while True:
            raw = await self.ws.receive_text()
            try:
                message = _parse(raw)
                if isinstance(message, RunCreate):
                    self.watch(await self.submit(message))
                else:
                    await self.answer(message)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first.get("loc", ()))
                await self.error("validation_error", f"{field}: {first.get('msg', 'invalid')}")
            except AppError as exc:
                await self.error(exc.code, exc.message)

    def watch(self, run_id: uuid.UUID, after: str | None = None) -> None:
        """Send the run's events (after the event id `after`) until it ends."""
        if run_id in self.followers:
            return
        task = asyncio.create_task(self.follow(run_id, after))
        self.followers[run_id] = task
        task.add_done_callback(lambda _: self.followers.pop(run_id, None))

    async def submit(self, body: RunCreate) -> uuid.UUID:
        if len(self.followers) >= MAX_LIVE_RUNS:
            raise RateLimited(f"At most {MAX_LIVE_RUNS} unfinished runs per connection")
        async with self.state.sessionmaker() as session:
            ctx = await self.authorize(session)
            verdict = await self.state.limiter.hit(
                "runs.submit", "60/minute", ctx.principal.identity
            )
            if verdict is not None and not verdict.allowed:
                raise RateLimited(f"Rate limit of {verdict.limit} per window exceeded")
            run = await service.submit(session, ctx, self.agent_id, body)
            run_id = run.id
            await commit(session)  # enqueues after the commit, as for POST
        return run_id

    async def answer(self, body: WsToolOutputs | WsApprovals) -> None:
        """The required action of one of this agent's runs answered, as by the POST endpoints;
        the run's events from there on follow, unless this socket already sends them."""
        if body.run_id not in self.followers and len(self.followers) >= MAX_LIVE_RUNS:
            raise RateLimited(f"At most {MAX_LIVE_RUNS} unfinished runs per connection")
        name = "runs.tool_outputs" if isinstance(body, WsToolOutputs) else "runs.approvals"
        async with self.state.sessionmaker() as session:
            ctx = await self.authorize(session)
            verdict = await self.state.limiter.hit(name, "60/minute", ctx.principal.identity)
            if verdict is not None and not verdict.allowed:
                raise RateLimited(f"Rate limit of {verdict.limit} per window exceeded")
            # Read before the answer publishes anything: what follows it is new to the client.
            after = await streams.last_id(self.state.redis, body.run_id)
            await actions.answer(session, ctx, body.run_id, body, agent_id=self.agent_id)
            await commit(session)
        self.watch(body.run_id, after)

    async def follow(self, run_id: uuid.UUID, after: str | None = None) -> None:
        try:
            async for event in streams.follow(
                self.state.redis,
                self.state.sessionmaker,
                self.project_id,
                run_id,
                last_event_id=after,
                keepalive=3600,
            ):
                if event is not None:
                    await self.send(event.message(run_id))
        except Exception:  # noqa: BLE001 - a closed socket ends its followers quietly
            log.debug("ws_follow_ended", run_id=str(run_id), exc_info=True)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_json(message)

    async def error(self, code: str, message: str) -> None:
        await self.send({"event": "error", "id": None, "data": {"code": code, "message": message}})

    async def close(self, reason: str, code: int) -> None:
        try:
            await self.ws.close(code=code, reason=reason[:120])
        except RuntimeError:
            pass  # already closed


async def serve(
    ws: WebSocket,
    project_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    token: str | None,
    api_key: str | None,
) -> None:
    # Accept first, so that every client sees the close code (a refused handshake is a 403).
    await ws.accept()
    sock = AgentSocket(ws, project_id, agent_id, token, api_key)
    try:
        lease = await sock.open()
        try:
            await lease.acquire()
        except RateLimited as exc:  # the caller's open streams are at the cap
            raise _Refused(exc.message, code=TRY_AGAIN_LATER) from None
        async with lease:
            await lease.run(sock.loop())
    except _Refused as exc:
        await sock.close(str(exc), exc.code)
    except AccessLost as lost:  # checked every STREAM_RECHECK_SECONDS, even while idle
        await sock.close(lost.error.message, POLICY_VIOLATION)
    except WebSocketDisconnect:
        pass
    finally:
        for task in list(sock.followers.values()):
            task.cancel()


def _parse(raw: str) -> RunCreate | WsToolOutputs | WsApprovals:
    """A client message, by its keys: an answer to a required action, or a new run."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and "run_id" in data:
        if "tool_outputs" in data:
            return WsToolOutputs.model_validate(data)
        if "decisions" in data:
            return WsApprovals.model_validate(data)
    return RunCreate.model_validate_json(raw)

"""`AsyncClient`: the asynchronous driver of the same operations as `Client`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from agentry_client import errors, models, resources
from agentry_client._core import (
    API_PREFIX,
    Call,
    Item,
    Op,
    SSEParser,
    connection_failed,
    resolve_project,
    tool_outputs,
)
from agentry_client._tools import acall_tool, without_refused
from agentry_client.client import USER_AGENT, Session, decode, passed, stream_timeout


class AsyncClient:
    """The Agentry API for asyncio; the same resources, rules and defaults as `Client`,
    with coroutines for single results and async iterators for lists and streams."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        refresh_token: str | None = None,
        on_tokens: Callable[[models.Tokens], None] | None = None,
        retry_seconds: float | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.session = Session(url, api_key, token, refresh_token, on_tokens, retry_seconds)
        self._http = httpx.AsyncClient(
            base_url=self.session.url + API_PREFIX,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self.auth = resources.Auth(self)
        self.projects = resources.Projects(self)
        self.agent_types = resources.AgentTypes(self)
        self.agents = resources.Agents(self)
        self.runs = AsyncRuns(self)
        self.webhooks = resources.Webhooks(self)
        self.metrics = resources.Metrics(self)
        self.api_keys = resources.ApiKeys(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- driver -------------------------------------------------------------------------

    async def run(self, op: Op[Any]) -> Any:
        send, value = op.send, None
        while True:
            try:
                message = send(value)
            except StopIteration as stop:
                return stop.value
            if isinstance(message, Item):
                raise TypeError("an operation yielded an item outside iterate()")
            try:
                value, send = await self.request(message), op.send
            except errors.AgentryError as exc:
                value, send = exc, op.throw

    async def iterate(self, op: Op[Any]) -> AsyncIterator[Any]:
        send, value = op.send, None
        while True:
            try:
                message = send(value)
            except StopIteration:
                return
            if isinstance(message, Item):
                value, send = None, op.send
                yield message.value
                continue
            try:
                value, send = await self.request(message), op.send
            except errors.AgentryError as exc:
                value, send = exc, op.throw

    async def request(self, call: Call) -> Any:
        return decode(await self._send(call))

    async def _send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        session = self.session
        deadline = time.monotonic() + session.retry.budget
        attempt, refreshed = 0, False
        while True:
            request = self._http.build_request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers={**session.headers(), **call.headers},
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = await self._http.send(request, stream=stream)
                if response.status_code >= 400 and stream:
                    await response.aread()
            except httpx.TransportError as exc:
                error: errors.AgentryError = connection_failed(exc)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401 and not refreshed and session.can_refresh(call):
                    refreshed = True
                    session.refreshed(await self.request(session.refresh_call()))
                    continue
                error = session.error_for(response)
            if not session.retry.retryable(call, error):
                raise error
            pause = session.retry.delay(attempt, error.retry_after)
            if time.monotonic() + pause > deadline:
                raise error
            await asyncio.sleep(pause)
            attempt += 1

    async def events(
        self, path: str, *, last_event_id: str | None = None, deadline: float | None = None
    ) -> AsyncIterator[models.Event]:
        """See `Client.events`."""
        last, attempt, cut_at = last_event_id, 0, None
        while not passed(deadline):
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            call = Call("GET", path, headers=headers, timeout=stream_timeout(deadline))
            try:
                response = await self._send(call, stream=True)
                try:
                    parser = SSEParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            if passed(deadline):
                                return
                            continue
                        attempt, cut_at = 0, None
                        last = event.id or last
                        yield event
                        if event.event == "end":
                            return
                finally:
                    await response.aclose()
            except httpx.TransportError:
                pass
            cut_at = cut_at or time.monotonic()
            if time.monotonic() - cut_at > self.session.retry.budget:
                raise connection_failed(ConnectionError("the event stream keeps dropping"))
            if not passed(deadline):
                await asyncio.sleep(self.session.retry.delay(attempt, None))
            attempt += 1


class AsyncRuns(resources.Runs):
    _d: AsyncClient

    async def stream(
        self, project: str, run_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[models.Event]:
        """See `Client.runs.stream`."""
        pid = await self._d.run(resolve_project(project))
        path = f"/projects/{pid}/runs/{run_id}/events"
        async for event in self._d.events(path, last_event_id=last_event_id):
            yield event

    async def wait(
        self,
        project: str,
        run_id: str,
        *,
        timeout: float = 300.0,
        tools: dict[str, Callable[[Any], Any]] | None = None,
        on_event: Callable[[models.Event], None] | None = None,
    ) -> models.Run:
        """See `Client.runs.wait`; tool functions may be coroutine functions."""
        pid = await self._d.run(resolve_project(project))
        deadline = time.monotonic() + timeout
        path = f"/projects/{pid}/runs/{run_id}/events"
        async for event in self._d.events(path, deadline=deadline):
            if on_event is not None:
                on_event(event)
            if event.event == "end" and isinstance(event.data, dict):
                return models.Run.from_api(event.data)
            if event.event == "requires_action":
                run = await self.get(pid, run_id)
                if run.status != "requires_action":
                    continue
                answers = tool_outputs(run.required_action or {}, tools or {})
                if answers is None:
                    return run
                await self._answer(pid, run_id, [await acall_tool(c, fn) for c, fn in answers])
        return await self.get(pid, run_id)

    async def _answer(self, pid: str, run_id: str, outputs: list[dict[str, Any]]) -> None:
        """See `Client.runs._answer`."""
        while True:
            try:
                await self.submit_tool_outputs(pid, run_id, outputs)
                return
            except errors.AgentryError as exc:
                kept = without_refused(outputs, exc)
                if kept is None:
                    raise
                outputs = kept

    async def run_with_tools(
        self,
        project: str,
        agent: str,
        input: str,
        *,
        tools: dict[str, Callable[[Any], Any]],
        timeout: float = 300.0,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        on_event: Callable[[models.Event], None] | None = None,
    ) -> models.Run:
        pid = await self._d.run(resolve_project(project))
        run = await self.submit(
            pid, agent, input, metadata=metadata, idempotency_key=idempotency_key
        )
        return await self.wait(pid, run.id, timeout=timeout, tools=tools, on_event=on_event)

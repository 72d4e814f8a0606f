"""`Client`: the synchronous driver of the API's operations."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from agentry_client import errors, models, resources
from agentry_client._core import (
    API_PREFIX,
    Call,
    Item,
    Op,
    RetryPolicy,
    SSEParser,
    connection_failed,
    env_url,
    parse_retry_after,
    resolve_project,
    tool_outputs,
)
from agentry_client._tools import call_tool, without_refused

USER_AGENT = "agentry-client/0.1"
STREAM_READ_SECONDS = 60.0  # the server sends a keep-alive at least every 15 s
CONNECT_SECONDS = 10.0


class Session:
    """Credentials and policy shared by both clients; a 401 with a refresh token refreshes
    the pair once and tells `on_tokens` (the CLI saves it)."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        token: str | None,
        refresh_token: str | None,
        on_tokens: Callable[[models.Tokens], None] | None,
        retry_seconds: float | None,
    ) -> None:
        self.url = env_url(url)
        self.api_key = api_key if api_key is not None else os.environ.get("AGENTRY_API_KEY")
        self.token = token if token is not None else os.environ.get("AGENTRY_TOKEN")
        self.refresh_token, self.on_tokens = refresh_token, on_tokens
        self.retry = RetryPolicy.from_env(retry_seconds)

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-API-Key": self.api_key}
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def can_refresh(self, call: Call) -> bool:
        return call.refreshable and bool(self.refresh_token) and not self.api_key

    def refresh_call(self) -> Call:
        body = {"refresh_token": self.refresh_token}
        return Call("POST", "/auth/refresh", json=body, refreshable=False)

    def refreshed(self, body: Any) -> None:
        tokens = models.Tokens.from_api(body)
        self.token, self.refresh_token = tokens.access_token, tokens.refresh_token
        if self.on_tokens is not None:
            self.on_tokens(tokens)

    def error_for(self, response: httpx.Response) -> errors.AgentryError:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return errors.from_response(
            response.status_code, response.content, response.headers, retry_after
        )


def decode(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise errors.ProtocolError(
            f"the server answered {response.status_code} with a body that is not JSON",
            status=response.status_code,
            code="bad_response",
            request_id=response.headers.get("x-request-id"),
        ) from exc


def stream_timeout(deadline: float | None) -> httpx.Timeout:
    """Reads end at the deadline (the caller then stops); connecting keeps its usual bound."""
    read = STREAM_READ_SECONDS
    if deadline is not None:
        read = max(0.05, min(read, deadline - time.monotonic()))
    return httpx.Timeout(CONNECT_SECONDS, read=read)


def passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class Client:
    """The Agentry API, synchronously. Defaults come from AGENTRY_URL, AGENTRY_API_KEY,
    AGENTRY_TOKEN and AGENTRY_RETRY_SECONDS (the retry budget, 60 s)."""

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.session = Session(url, api_key, token, refresh_token, on_tokens, retry_seconds)
        self._http = httpx.Client(
            base_url=self.session.url + API_PREFIX,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self.auth = resources.Auth(self)
        self.projects = resources.Projects(self)
        self.agent_types = resources.AgentTypes(self)
        self.agents = resources.Agents(self)
        self.runs = Runs(self)
        self.webhooks = resources.Webhooks(self)
        self.metrics = resources.Metrics(self)
        self.api_keys = resources.ApiKeys(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- driver -------------------------------------------------------------------------

    def run(self, op: Op[Any]) -> Any:
        send, value = op.send, None
        while True:
            try:
                message = send(value)
            except StopIteration as stop:
                return stop.value
            if isinstance(message, Item):
                raise TypeError("an operation yielded an item outside iterate()")
            try:
                value, send = self.request(message), op.send
            except errors.AgentryError as exc:
                value, send = exc, op.throw

    def iterate(self, op: Op[Any]) -> Iterator[Any]:
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
                value, send = self.request(message), op.send
            except errors.AgentryError as exc:
                value, send = exc, op.throw

    def request(self, call: Call) -> Any:
        return decode(self._send(call))

    def _send(self, call: Call, *, stream: bool = False) -> httpx.Response:
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
                response = self._http.send(request, stream=stream)
                if response.status_code >= 400 and stream:
                    response.read()
            except httpx.TransportError as exc:
                error: errors.AgentryError = connection_failed(exc)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401 and not refreshed and session.can_refresh(call):
                    refreshed = True
                    session.refreshed(self.request(session.refresh_call()))
                    continue
                error = session.error_for(response)
            if not session.retry.retryable(call, error):
                raise error
            pause = session.retry.delay(attempt, error.retry_after)
            if time.monotonic() + pause > deadline:
                raise error
            time.sleep(pause)
            attempt += 1

    def events(
        self, path: str, *, last_event_id: str | None = None, deadline: float | None = None
    ) -> Iterator[models.Event]:
        """A run's events until `end`; a dropped connection is resumed with Last-Event-ID.
        Stops early (without `end`) when `deadline` (time.monotonic()) passes."""
        last, attempt, cut_at = last_event_id, 0, None
        while not passed(deadline):
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            call = Call("GET", path, headers=headers, timeout=stream_timeout(deadline))
            with contextlib.suppress(httpx.TransportError):
                response = self._send(call, stream=True)
                with contextlib.closing(response):
                    parser = SSEParser()
                    for line in response.iter_lines():
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
            # The stream ended without `end`: resume it, within the retry budget.
            cut_at = cut_at or time.monotonic()
            if time.monotonic() - cut_at > self.session.retry.budget:
                raise connection_failed(ConnectionError("the event stream keeps dropping"))
            if not passed(deadline):
                time.sleep(self.session.retry.delay(attempt, None))
            attempt += 1


class Runs(resources.Runs):
    _d: Client

    def stream(
        self, project: str, run_id: str, *, last_event_id: str | None = None
    ) -> Iterator[models.Event]:
        """The run's events (`models.Event`) until `end`, resuming after a dropped connection
        with Last-Event-ID. A run waiting for an action keeps its stream open."""
        pid = self._d.run(resolve_project(project))
        path = f"/projects/{pid}/runs/{run_id}/events"
        yield from self._d.events(path, last_event_id=last_event_id)

    def wait(
        self,
        project: str,
        run_id: str,
        *,
        timeout: float = 300.0,
        tools: dict[str, Callable[[Any], Any]] | None = None,
        on_event: Callable[[models.Event], None] | None = None,
    ) -> models.Run:
        """Follow the run and answer its `submit_tool_outputs` actions with `tools`
        ({name: fn(arguments) -> output; an exception gives an `is_error` result, an output
        the server refuses too: see `without_refused`). Returns the run when it is final, when
        it requires an action `tools` cannot give (status `requires_action`), or when `timeout`
        seconds passed (any other status)."""
        pid = self._d.run(resolve_project(project))
        deadline = time.monotonic() + timeout
        path = f"/projects/{pid}/runs/{run_id}/events"
        for event in self._d.events(path, deadline=deadline):
            if on_event is not None:
                on_event(event)
            if event.event == "end" and isinstance(event.data, dict):
                return models.Run.from_api(event.data)
            if event.event == "requires_action":
                run = self.get(pid, run_id)
                if run.status != "requires_action":
                    continue  # already answered: a replayed event
                answers = tool_outputs(run.required_action or {}, tools or {})
                if answers is None:
                    return run
                self._answer(pid, run_id, [call_tool(call, fn) for call, fn in answers])
        return self.get(pid, run_id)

    def _answer(self, pid: str, run_id: str, outputs: list[dict[str, Any]]) -> None:
        """Submit the outputs; one the server cannot take is sent again as an error result
        saying why (see `without_refused`)."""
        while True:
            try:
                self.submit_tool_outputs(pid, run_id, outputs)
                return
            except errors.AgentryError as exc:
                kept = without_refused(outputs, exc)
                if kept is None:
                    raise
                outputs = kept

    def run_with_tools(
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
        """Submit a run and execute its client tools here until it ends (see `wait`)."""
        pid = self._d.run(resolve_project(project))
        run = self.submit(pid, agent, input, metadata=metadata, idempotency_key=idempotency_key)
        return self.wait(pid, run.id, timeout=timeout, tools=tools, on_event=on_event)

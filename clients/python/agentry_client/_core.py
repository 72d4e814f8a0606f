"""What the sync and async clients share: request descriptions, the retry policy, the SSE
parser, and the operations written once as generators of `Call`s (sans I/O).

An operation is a generator that yields a `Call` and is sent the decoded JSON answer (None
for an empty body); it may also yield `Item`s, which a driver hands to the caller as the
elements of an iterator. `Client` and `AsyncClient` are drivers of the same operations.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from agentry_client import errors
from agentry_client.models import Event

T = TypeVar("T")
API_PREFIX = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRY_SECONDS = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
PAGE_LIMIT = 100  # the API's maximum: fewest round trips over a long list


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # under /api/v1
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: Any = None  # seconds or an httpx.Timeout; None: the client's default
    refreshable: bool = True  # a 401 may be answered by refreshing the token pair first

    @property
    def idempotent(self) -> bool:
        """May be sent again after a failure: GET, DELETE, or a POST that carries a key."""
        return self.method in ("GET", "DELETE") or "Idempotency-Key" in self.headers

    def with_params(self, **params: Any) -> Call:
        return replace(self, params={**(self.params or {}), **params})


@dataclass(frozen=True)
class Item:
    value: Any


Op = Generator[Call | Item, Any, T]


def idempotency_headers(key: str | None) -> dict[str, str]:
    """spawn and submit always carry a key, reused on every retry of the same call."""
    return {"Idempotency-Key": key or str(uuid.uuid4())}


@dataclass(frozen=True)
class RetryPolicy:
    """Connection errors, 502/503/504 and 429 (honouring Retry-After) are retried with
    exponential backoff and jitter while `budget` seconds have not passed; only idempotent
    calls (see `Call.idempotent`)."""

    budget: float = DEFAULT_RETRY_SECONDS
    base: float = 0.25
    cap: float = 8.0

    @classmethod
    def from_env(cls, budget: float | None = None) -> RetryPolicy:
        if budget is None:
            budget = float(os.environ.get("AGENTRY_RETRY_SECONDS", DEFAULT_RETRY_SECONDS))
        return cls(budget=budget)

    def retryable(self, call: Call, error: errors.AgentryError) -> bool:
        if not call.idempotent:
            return False
        return isinstance(error, errors.ConnectionFailed) or error.status in RETRY_STATUSES

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        backoff = min(self.cap, self.base * 2**attempt)
        return backoff / 2 + random.uniform(0, backoff / 2)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: rare from this API; fall back to our backoff


def connection_failed(exc: Exception) -> errors.ConnectionFailed:
    return errors.ConnectionFailed(
        f"cannot reach the server: {exc.__class__.__name__}: {exc}".rstrip(": "),
        code="connection_failed",
    )


def env_url(url: str | None) -> str:
    return (url or os.environ.get("AGENTRY_URL") or DEFAULT_URL).rstrip("/")


class SSEParser:
    """Server-Sent Events, one line at a time (without its line terminator)."""

    def __init__(self) -> None:
        self._name: str | None = None
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data and self._name is None:
            return None
        import json

        text = "\n".join(self._data)
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = text
        event = Event(self._name or "message", self._id, data)
        self._name, self._data = None, []  # the id persists, as the spec says
        return event


# --- operations -----------------------------------------------------------------------


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def paginate(call: Call, parse: Callable[[dict[str, Any]], Any]) -> Op[None]:
    """Every item of every page, in turn (an item seen on an earlier page is not repeated)."""
    seen: set[Any] = set()
    page = 1
    while True:
        body = yield call.with_params(page=page, limit=PAGE_LIMIT)
        for raw in body.get("data", []):
            key = raw.get("id") if isinstance(raw, dict) else None
            if key is not None and key in seen:
                continue
            seen.add(key)
            yield Item(parse(raw))
        if not (body.get("pagination") or {}).get("has_next"):
            return
        page += 1


def collect(call: Call) -> Op[list[dict[str, Any]]]:
    """Every raw item of every page, as a list (yields only Calls)."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        body = yield call.with_params(page=page, limit=PAGE_LIMIT)
        items.extend(body.get("data", []))
        if not (body.get("pagination") or {}).get("has_next"):
            return items
        page += 1


def not_found(kind: str, name: str) -> errors.NotFound:
    return errors.NotFound(f"no {kind} named {name!r}", status=None, code="not_found")


def resolve_project(ref: str) -> Op[str]:
    """A project id, or the id of the project with that slug among the caller's."""
    if is_uuid(ref):
        return str(ref)
    for raw in (yield from collect(Call("GET", "/projects"))):
        if raw.get("slug") == ref:
            return str(raw["id"])
    raise not_found("project", ref)


def resolve_agent_type(ref: str) -> Op[str]:
    if is_uuid(ref):
        return str(ref)
    for raw in (yield from collect(Call("GET", "/agent-types"))):
        if raw.get("slug") == ref:
            return str(raw["id"])
    raise not_found("agent type", ref)


def resolve_agent(project_id: str, ref: str) -> Op[str]:
    """An agent id, or the id of the project's agent with that name (a live one first)."""
    if is_uuid(ref):
        return str(ref)
    matches = [
        raw
        for raw in (yield from collect(Call("GET", f"/projects/{project_id}/agents")))
        if raw.get("name") == ref
    ]
    live = [raw for raw in matches if raw.get("status") != "terminated"]
    chosen = live or matches
    if not chosen:
        raise not_found("agent", ref)
    if len(live) > 1:
        raise errors.BadRequest(
            f"{len(live)} agents are named {ref!r}: use the id", code="ambiguous_name"
        )
    return str(chosen[0]["id"])


def tool_outputs(
    required_action: dict[str, Any], tools: dict[str, Callable[..., Any]]
) -> list[tuple[dict[str, Any], Callable[..., Any]]] | None:
    """The (call, function) pairs that answer a submit_tool_outputs action, or None if this
    caller cannot answer it (an approval, or a tool it has no function for)."""
    if (required_action or {}).get("type") != "submit_tool_outputs":
        return None
    calls = required_action.get("tool_calls") or []
    if not calls or any(call.get("name") not in tools for call in calls):
        return None
    return [(call, tools[call["name"]]) for call in calls]


class ToolError(Exception):
    """Raise from a tool function to submit `output` with `is_error: true`."""

    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


def tool_result(call: dict[str, Any], output: Any, is_error: bool) -> dict[str, Any]:
    if not isinstance(output, str):
        import json

        output = json.dumps(output)
    return {"tool_call_id": call["id"], "output": output, "is_error": is_error}

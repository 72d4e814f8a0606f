"""Pure ASGI middleware: request id on every response, access log, Prometheus per route template."""

from __future__ import annotations

import re
import time
import uuid
import weakref
from contextvars import ContextVar
from typing import Any

import structlog
from fastapi.routing import iter_route_contexts
from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.errors import unexpected_error_response
from backend.core.logging import innermost_frame
from backend.core.ratelimit import RATE_LIMIT_STATE_KEY

log = structlog.get_logger("agentry.access")

REQUESTS = Counter("agentry_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "agentry_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# The current request's id, for audit rows written deep inside services.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope) or str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        current_request_id.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
                message["headers"] = _with_rate_limits(headers, scope["state"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Answer unexpected errors here rather than in Starlette's outermost
            # ServerErrorMiddleware: the 500 then carries X-Request-ID, and nothing
            # re-raises into the server, which would log a stack trace.
            if scope["type"] != "http":
                raise
            if started:
                log.error(
                    "unhandled_error_after_start",
                    error_type=type(exc).__name__,
                    where=innermost_frame(exc.__traceback__),
                )
                return
            response = unexpected_error_response(Request(scope), exc)
            await response(scope, receive, send_wrapper)
        finally:
            if scope["type"] == "http":
                self._observe(scope, status, time.perf_counter() - start)

    @staticmethod
    def _observe(scope: Scope, status: int, elapsed: float) -> None:
        route = route_template(scope)
        method = scope["method"]
        counter, histogram = _metrics(method, route, status)
        counter.inc()
        histogram.observe(elapsed)
        log.info(
            "request",
            method=method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


def _with_rate_limits(headers: list[Any], state: dict[str, Any]) -> list[Any]:
    """The X-RateLimit-* headers of the route's limiter (core/ratelimit.py puts them in the
    request's state), on whatever response leaves: a model, a JSONResponse, an error, a
    stream. The one place they are added."""
    limits = state.get(RATE_LIMIT_STATE_KEY)
    if not limits:
        return headers
    present = {name.lower() for name, _ in headers}
    return headers + [(n, v) for n, v in limits if n not in present]


# (method, route template, status) -> the labelled children: labels() locks and validates
# on every call. Bounded: route templates and statuses are finite.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    children = _CHILDREN.get((method, route, status))
    if children is None:
        children = REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)
        _CHILDREN[(method, route, status)] = children
    return children


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            # Echo only well-formed ids: a raw header must not inject into logs.
            return candidate if _VALID_ID.match(candidate) else None
    return None


# Per app: id(route object) -> full path template. A route of an included router only
# knows its path relative to that router ("/projects/{project_id}"), not its prefix.
_TEMPLATES: weakref.WeakKeyDictionary[object, dict[int, str]] = weakref.WeakKeyDictionary()


def _build_templates(app: object) -> dict[int, str]:
    templates = {
        id(context.original_route): context.path_format
        for context in iter_route_contexts(getattr(app, "routes", []))
        if context.path_format
    }
    _TEMPLATES[app] = templates
    return templates


def route_template(scope: Scope) -> str:
    """The matched route's full template (/api/v1/projects/{project_id}): a bounded label."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    app = scope.get("app")
    if app is None:
        return getattr(route, "path", None) or "unmatched"
    templates = _TEMPLATES.get(app)
    if templates is None or id(route) not in templates:
        templates = _build_templates(app)  # first request, or routes added since
        # Remember misses too (mounts, exotic routes): rebuild at most once per route.
        templates.setdefault(id(route), getattr(route, "path", None) or "unmatched")
    return templates[id(route)]

"""The OpenAPI document: FastAPI's, plus what every operation shares, declared once here.

Routers declare their own statuses (402, 409, a business 400); this module adds what is true of
every operation by construction: the errors a middleware, the validation handler, the
authenticator or the limiter can give, the headers every response carries, `security: []` on
public operations, the links from each create to the operations that take its id, and the
streams FastAPI cannot describe (SSE event schemas, the WebSocket as `x-websockets`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from backend.core.schemas import error_content
from backend.runs.schemas import RUN_EVENTS, WEBSOCKET_MESSAGES

# The docs' tag order (api.py includes the routers in hot-path-first order instead).
TAGS = [
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics (public)"},
    {"name": "auth", "description": "Register, log in (JWT pair), refresh, users, API keys"},
    {"name": "projects", "description": "Projects (tenants) and their members' roles"},
    {"name": "audit", "description": "Who did what: the project's and the whole audit log"},
    {"name": "agent types", "description": "Templates agents are spawned from (superusers)"},
    {"name": "agents", "description": "Agent instances and their lifecycle"},
    {"name": "usage", "description": "Tokens, cost and runs per project, agent and model"},
    {"name": "runs", "description": "Work for an agent, executed by workers; SSE and WebSocket"},
    {"name": "webhooks", "description": "Signed event deliveries to a project's endpoints"},
]
SERVERS = [{"url": "/", "description": "The server that serves this document"}]

_RATE = "of the route's window for this caller (absent while the limiter's Redis is down)"
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id (echoed if the request sent a well-formed one)",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {
        "description": f"Requests allowed {_RATE}",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": f"Requests left {_RATE}",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Epoch seconds when the window resets",
        "schema": {"type": "integer"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: `Bearer`",
        "required": True,
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "URL of the created object",
        "required": True,
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER_503 = {
    "description": "Seconds to wait (login and register while their limits cannot be counted)",
    "schema": {"type": "integer", "minimum": 1},
}
_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# Creates whose answer names the new object in `Location`.
LOCATED = {"create_project", "create_user", "create_agent_type", "spawn_agent", "submit_run"}

_PROJECT = {"project_id": "$response.body#/id"}
_AGENT = {"project_id": "$response.body#/project_id", "agent_id": "$response.body#/id"}
_RUN = {"project_id": "$response.body#/project_id", "run_id": "$response.body#/id"}
_MEMBER = {"project_id": "$request.path.project_id", "user_id": "$response.body#/user_id"}
_WEBHOOK = {"project_id": "$response.body#/project_id", "webhook_id": "$response.body#/id"}
# create operation -> {target operation: its parameters from the create's answer}
LINKS: dict[str, dict[str, dict[str, str]]] = {
    "create_project": {
        op: _PROJECT
        for op in (
            "get_project",
            "update_project",
            "delete_project",
            "list_members",
            "add_member",
            "list_project_audit_log",
            "spawn_agent",
            "list_agents",
            "get_project_agent_metrics",
            "list_runs",
            "get_project_metrics",
            "create_webhook",
            "list_webhooks",
        )
    },
    "spawn_agent": {
        op: _AGENT
        for op in (
            "get_agent",
            "update_agent",
            "pause_agent",
            "resume_agent",
            "terminate_agent",
            "get_agent_metrics",
            "list_agent_events",
            "submit_run",
        )
    },
    "submit_run": {
        op: _RUN
        for op in (
            "get_run",
            "cancel_run",
            "stream_run_events",
            "list_run_steps",
            "submit_tool_outputs",
            "approve_tool_calls",
        )
    },
    "add_member": {op: _MEMBER for op in ("update_member", "remove_member")},
    "create_user": {
        op: {"user_id": "$response.body#/id"} for op in ("get_user", "update_user", "delete_user")
    },
    "create_api_key": {"revoke_api_key": {"key_id": "$response.body#/id"}},
    "create_webhook": {
        op: _WEBHOOK
        for op in (
            "get_webhook",
            "update_webhook",
            "delete_webhook",
            "rotate_webhook_secret",
            "test_webhook",
            "list_webhook_deliveries",
        )
    },
    "list_webhook_deliveries": {
        "redeliver_webhook": {
            "project_id": "$request.path.project_id",
            "webhook_id": "$request.path.webhook_id",
            "delivery_id": "$response.body#/data/0/id",
        }
    },
    "create_agent_type": {
        op: {"agent_type_id": "$response.body#/id"}
        for op in ("get_agent_type", "update_agent_type", "delete_agent_type")
    },
}


_CREDENTIALS = {"email": "$request.body#/email", "password": "$request.body#/password"}
_REFRESH = {"refresh_token": "$response.body#/refresh_token"}
# operation -> {target operation: the target's body, from this one's request or answer}
BODY_LINKS: dict[str, dict[str, dict[str, str]]] = {
    "register": {"login": _CREDENTIALS},
    "login": {"refresh_tokens": _REFRESH, "logout": _REFRESH},
    "refresh_tokens": {"refresh_tokens": _REFRESH, "logout": _REFRESH},
}


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=TAGS,
        servers=SERVERS,
    )
    components = spec["components"]
    _restore_examples(components["schemas"])
    # Never answered: every 422 leaves in our envelope (documented below instead).
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    components["headers"] = HEADERS
    clients, server = WEBSOCKET_MESSAGES
    models: list[tuple[type[BaseModel], Any]] = [
        (model, "serialization") for model in (*RUN_EVENTS.values(), server)
    ]
    _add_models(components["schemas"], [*models, *((c, "validation") for c in clients)])
    for path, item in spec["paths"].items():
        for operation in item.values():
            _complete(path, operation)
    spec["x-websockets"] = websockets()
    return spec


def _models(cls: type[BaseModel] = BaseModel) -> Iterator[type[BaseModel]]:
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("backend."):
            yield sub
        yield from _models(sub)


def _restore_examples(schemas: dict[str, Any]) -> None:
    """get_openapi() drops every null from the document, examples' too (`"field": null`
    disappears, and a required nullable field with it): put the models' own examples back."""
    by_name: dict[str, list[type[BaseModel]]] = {}
    for model in set(_models()):
        by_name.setdefault(re.sub(r"[^a-zA-Z0-9.\-_]", "_", model.__name__), []).append(model)
    for name, schema in schemas.items():
        found = by_name.get(name, [])
        if "examples" in schema and len(found) == 1:
            schema["examples"] = found[0].model_json_schema()["examples"]


def _add_models(schemas: dict[str, Any], models: list[tuple[type[BaseModel], Any]]) -> None:
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)  # FastAPI's own rendering of a model it already has


def _is_fastapi_default(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref", "").endswith("/HTTPValidationError")


def _statuses(path: str, operation: dict[str, Any]) -> set[int]:
    public = not operation.get("security")
    statuses = {500, 503}
    if "requestBody" in operation:
        statuses |= {400, 413, 422}  # malformed JSON; the body limit; validation
    if operation.get("parameters"):
        statuses.add(422)
    if not public:
        statuses |= {401, 403}
        if "{" in path:
            statuses.add(404)
    if path.startswith("/api/"):
        statuses.add(429)
    return statuses


def _complete(path: str, operation: dict[str, Any]) -> None:
    responses, operation_id = operation["responses"], operation["operationId"]
    for status in sorted(_statuses(path, operation)):
        if str(status) not in responses or _is_fastapi_default(responses[str(status)]):
            responses[str(status)] = error_content(status)
    operation.setdefault("security", [])  # none of FastAPI's: a public operation
    limited = path.startswith("/api/")
    for status, response in responses.items():
        names = ["X-Request-ID", *(_LIMIT_HEADERS if limited else ())]
        names += ["Retry-After"] if status == "429" else []
        names += ["WWW-Authenticate"] if status == "401" else []
        names += ["Location"] if status.startswith("2") and operation_id in LOCATED else []
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in names}
        if status == "503":
            response["headers"]["Retry-After"] = _RETRY_AFTER_503
    links = {
        **{t: {"operationId": t, "parameters": p} for t, p in LINKS.get(operation_id, {}).items()},
        **{
            t: {"operationId": t, "requestBody": b}
            for t, b in BODY_LINKS.get(operation_id, {}).items()
        },
    }
    if links:
        success = next(s for s in responses if s.startswith("2"))
        responses[success]["links"] = links


def websockets() -> dict[str, Any]:
    """The WebSocket, which OpenAPI has no operation for: an `x-websockets` extension."""
    ref = "#/components/schemas/{}".format
    return {
        "/api/v1/projects/{project_id}/agents/{agent_id}/ws": {
            "summary": "Submit runs to one agent and receive their events",
            "description": (
                "Authenticate with `?access_token=` (or `?api_key=`; non-browser clients may "
                "send the usual headers). Without the right to submit runs to the agent the "
                "socket closes with 1008; over the rate limit with 1013. A RunCreate message "
                "(the POST …/runs body) creates a run; the server then sends that run's events "
                "as WsEvent objects, ending with `end`. A WsToolOutputs or WsApprovals message "
                "answers the required action of one of the agent's runs, as POST …/tool-outputs "
                "and …/approvals do; the server then sends that run's events from there on (if "
                "it does not already). A bad message answers an `error` event and keeps the "
                "socket."
            ),
            "parameters": [
                {"name": "project_id", "in": "path", "required": True, "schema": _UUID},
                {"name": "agent_id", "in": "path", "required": True, "schema": _UUID},
                {"name": "access_token", "in": "query", "schema": {"type": "string"}},
                {"name": "api_key", "in": "query", "schema": {"type": "string"}},
            ],
            "publish": {
                "oneOf": [{"$ref": ref(model.__name__)} for model in WEBSOCKET_MESSAGES[0]]
            },
            "subscribe": {"$ref": ref(WEBSOCKET_MESSAGES[1].__name__)},
        }
    }


_UUID = {"type": "string", "format": "uuid"}

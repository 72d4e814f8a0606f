"""Every response of every rate-limited route carries X-RateLimit-*, whatever the route
returns (a model, a JSONResponse, an error, a stream): one mechanism, at the ASGI edge."""

from __future__ import annotations

import re
import uuid

from fastapi.routing import APIRoute, iter_route_contexts

from backend.agent_types.models import AgentType
from backend.agents.models import Agent
from backend.projects.models import Role
from backend.runs.models import Run
from tests.support.auth import PASSWORD, Auth

LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _limiters(dependant) -> bool:
    """Whether the route's dependency tree enforces a rate limit."""
    for dep in dependant.dependencies:
        name = getattr(dep.call, "__qualname__", "")
        if "rate_limit" in name or name == "_stream_reader" or _limiters(dep):
            return True
    return False


def _limited_routes(app) -> list[tuple[str, str]]:
    routes = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and _limiters(route.dependant):
            routes += [(method, context.path_format) for method in sorted(route.methods)]
    return routes


async def test_every_limited_route_answers_with_rate_limit_headers(app, client, auth: Auth) -> None:
    admin = await auth.user(superuser=True)
    project = await auth.project(admin)
    other = await auth.user()
    member = await auth.member(project, Role.member)
    agent_type = AgentType(name="T", slug=f"t-{uuid.uuid4().hex[:6]}", provider="fake", model="f")
    auth.db.add(agent_type)
    await auth.db.commit()
    agent = Agent(project_id=project.id, agent_type_id=agent_type.id, name="a")
    auth.db.add(agent)
    await auth.db.commit()
    run = Run(project_id=project.id, agent_id=agent.id, input="x", provider="fake", model="f")
    run.status = "cancelled"  # test setup: a finished run, so its event stream ends at once
    auth.db.add(run)
    await auth.db.commit()
    ids = {
        "project_id": project.id,
        "agent_id": agent.id,
        "run_id": run.id,
        "agent_type_id": agent_type.id,
        "user_id": other.user.id,
        "member_user_id": member.user.id,
        "key_id": uuid.uuid4(),
        "webhook_id": uuid.uuid4(),
        "delivery_id": uuid.uuid4(),
    }
    bodies = {
        "/api/v1/auth/login": {"email": admin.user.email, "password": PASSWORD},
        "/api/v1/auth/register": {"email": f"n-{uuid.uuid4().hex[:6]}@x.io", "password": PASSWORD},
    }
    routes = _limited_routes(app)
    assert len(routes) > 30  # the sweep sees the API, not an empty list
    missing = []
    # Deleting the project last: every other route still finds it.
    for method, path in sorted(routes, key=lambda r: (r[0] == "DELETE", r[1])):
        url = re.sub(r"\{(\w+)\}", lambda m, p=path: str(_id(ids, m.group(1), p)), path)
        kwargs = {}
        if method in ("POST", "PATCH", "PUT"):
            kwargs = (
                {"data": {"username": admin.user.email, "password": PASSWORD}}
                if path.endswith("/auth/token")
                else {"json": bodies.get(path, {})}
            )
        response = await client.request(method, url, headers=admin.headers, **kwargs)
        absent = [h for h in LIMIT_HEADERS if h not in response.headers]
        if absent:
            missing.append(f"{method} {path} -> {response.status_code}: no {absent}")
    assert missing == []


def _id(ids: dict[str, uuid.UUID], name: str, path: str) -> uuid.UUID:
    if name == "user_id" and "/members/" in path:
        return ids["member_user_id"]
    return ids[name]

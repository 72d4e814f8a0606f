"""Role x endpoint matrix for every project-scoped route of the platform core.

Each cell is one request by one principal on a fresh project, asserting the exact
status: success, 403 (can see, may not act) or 404 (may not see).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from backend.core.db import create_sessionmaker
from backend.projects.models import Project, ProjectMember, Role
from backend.projects.router import router as projects_router
from tests.support.auth import Actor, Auth

PRINCIPALS = [
    "owner",
    "admin",
    "member",
    "viewer",
    "outsider",
    "superuser",
    "key_with_scope",
    "key_without_scope",
    "key_of_other_project",
    "anonymous",
]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # under /api/v1; {project_id}, {user_id} = a viewer of the project
    ok: int
    min_role: Role
    scope: str | None  # the API key scope that admits it; None: never by API key
    body: str | None = None  # "description", "new_member", "role"


ROUTES = [
    Route("GET", "/projects/{project_id}", 200, Role.viewer, "projects:read"),
    Route("PATCH", "/projects/{project_id}", 200, Role.admin, None, "description"),
    Route("DELETE", "/projects/{project_id}", 204, Role.owner, None),
    Route("GET", "/projects/{project_id}/members", 200, Role.viewer, "projects:read"),
    Route("POST", "/projects/{project_id}/members", 201, Role.admin, None, "new_member"),
    Route("PATCH", "/projects/{project_id}/members/{user_id}", 200, Role.admin, None, "role"),
    Route("DELETE", "/projects/{project_id}/members/{user_id}", 204, Role.admin, None),
    Route("GET", "/projects/{project_id}/audit-log", 200, Role.admin, None),
]
RANK = [Role.viewer, Role.member, Role.admin, Role.owner]


def expected(route: Route, principal: str) -> int:
    if principal == "anonymous":
        return 401
    if principal in ("outsider", "key_of_other_project"):
        return 404
    if principal == "superuser":
        return route.ok
    if principal == "key_without_scope":
        return 403
    if principal == "key_with_scope":  # the key's owner is the project owner
        return route.ok if route.scope else 403
    role = Role(principal)
    return route.ok if RANK.index(role) >= RANK.index(route.min_role) else 403


def test_the_matrix_covers_every_project_scoped_route():
    served = {
        (method, route.path)
        for route in projects_router.routes
        if "{project_id}" in route.path
        for method in route.methods
    }
    assert served == {(r.method, r.path) for r in ROUTES}


@pytest.fixture
async def matrix_client(app) -> AsyncIterator[httpx.AsyncClient]:
    # No table truncation: every cell works on its own fresh users and projects.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def fresh_auth(engine, settings) -> AsyncIterator[Auth]:
    async with create_sessionmaker(engine)() as session:
        yield Auth(session, settings)


async def make_principal(auth: Auth, name: str, owner: Actor, project: Project) -> Actor:
    if name == "owner":
        return owner
    if name in ("admin", "member", "viewer"):
        return await auth.member(project, Role(name))
    if name == "outsider":
        return await auth.user()
    if name == "superuser":
        return await auth.user(superuser=True)
    if name == "key_with_scope":
        return await auth.api_key(owner)  # every scope
    if name == "key_without_scope":
        return await auth.api_key(owner, scopes=["metrics:read"])
    if name == "key_of_other_project":
        other = await auth.project(owner)
        return await auth.api_key(owner, project=other)
    return Actor(owner.user, {})


def body_for(route: Route, newcomer: Actor) -> dict | None:
    return {
        None: None,
        "description": {"description": "changed"},
        "new_member": {"email": newcomer.user.email, "role": "viewer"},
        "role": {"role": "member"},
    }[route.body]


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_role_matrix(matrix_client, fresh_auth, route, principal):
    auth = fresh_auth
    owner = await auth.user()
    project = await auth.project(owner)
    target = await auth.member(project, Role.viewer)
    newcomer = await auth.user()
    actor = await make_principal(auth, principal, owner, project)

    path = "/api/v1" + route.path.format(project_id=project.id, user_id=target.user.id)
    r = await matrix_client.request(
        route.method, path, json=body_for(route, newcomer), headers=actor.headers
    )

    want = expected(route, principal)
    assert r.status_code == want, r.text
    if want >= 400:
        error = r.json()["error"]
        assert error["code"] == {401: "unauthorized", 403: "forbidden", 404: "not_found"}[want]
        await assert_unchanged(auth, route, project, target, newcomer)


async def assert_unchanged(auth: Auth, route: Route, project, target, newcomer) -> None:
    """A refused request changed nothing."""
    deleted_at, description = (
        await auth.db.execute(
            select(Project.deleted_at, Project.description).where(Project.id == project.id)
        )
    ).one()
    assert deleted_at is None
    assert description is None
    roles = dict(
        (
            await auth.db.execute(
                select(ProjectMember.user_id, ProjectMember.role).where(
                    ProjectMember.project_id == project.id
                )
            )
        ).all()
    )
    assert roles[target.user.id] == Role.viewer
    assert newcomer.user.id not in roles

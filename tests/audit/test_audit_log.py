"""Audit log: one row per state-changing request, in the request's own transaction."""

from __future__ import annotations

import uuid

import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import func, select

from backend.access import CurrentPrincipal
from backend.audit import service as audit
from backend.audit.models import AuditLog
from backend.core.db import Session
from backend.core.errors import Conflict
from backend.projects.models import Role
from tests.conftest import make_settings
from tests.support.apps import running_app
from tests.support.auth import PASSWORD

API = "/api/v1"


async def entries(db, **where) -> list[AuditLog]:
    query = select(AuditLog).order_by(AuditLog.created_at).execution_options(populate_existing=True)
    for name, value in where.items():
        query = query.where(getattr(AuditLog, name) == value)
    return list(await db.scalars(query))


async def count(db) -> int:
    return await db.scalar(select(func.count()).select_from(AuditLog))


async def test_project_and_member_changes_are_audited(client, auth, db):
    owner = await auth.user()
    newcomer = await auth.user()
    r = await client.post(f"{API}/projects", json={"name": "Audited"}, headers=owner.headers)
    pid = r.json()["id"]
    request_id = r.headers["x-request-id"]
    base = f"{API}/projects/{pid}"
    await client.patch(base, json={"description": "d"}, headers=owner.headers)
    await client.post(
        f"{base}/members",
        json={"email": newcomer.user.email, "role": "viewer"},
        headers=owner.headers,
    )
    await client.patch(
        f"{base}/members/{newcomer.user.id}", json={"role": "member"}, headers=owner.headers
    )
    await client.delete(f"{base}/members/{newcomer.user.id}", headers=owner.headers)
    assert (await client.delete(base, headers=owner.headers)).status_code == 204

    rows = await entries(db, project_id=uuid.UUID(pid))
    assert [e.action for e in rows] == [
        "project.create",
        "project.update",
        "member.add",
        "member.update",
        "member.remove",
        "project.delete",
    ]
    assert all(e.actor_user_id == owner.user.id and e.actor_api_key_id is None for e in rows)
    assert rows[0].request_id == request_id
    assert rows[0].target_type == "project"
    assert rows[0].target_id == pid
    assert rows[2].target_id == str(newcomer.user.id)
    assert rows[2].details == {"role": "viewer"}
    assert rows[3].details == {"from": "viewer", "to": "member"}
    assert rows[1].details == {"fields": ["description"]}


async def test_api_key_lifecycle_is_audited_with_the_key_as_target(client, auth, db):
    owner = await auth.user()
    project = await auth.project(owner)
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "ci", "project_id": str(project.id)},
        headers=owner.headers,
    )
    key_id = r.json()["id"]
    assert r.json()["key"] not in str([e.details for e in await entries(db)])
    await client.delete(f"{API}/api-keys/{key_id}", headers=owner.headers)
    rows = await entries(db, target_id=key_id)
    assert [e.action for e in rows] == ["api_key.create", "api_key.revoke"]
    assert all(e.project_id == project.id for e in rows)


async def test_actions_through_an_api_key_name_the_key(client, auth, db):
    owner = await auth.user(superuser=True)
    key = await auth.api_key(owner)
    r = await client.post(f"{API}/projects", json={"name": "x"}, headers=key.headers)
    assert r.status_code == 403  # keys cannot create projects ...
    project = await auth.project(owner)
    await client.get(f"{API}/projects/{project.id}", headers=key.headers)
    assert await count(db) == 0  # ... and reads write nothing


async def test_user_admin_changes_are_audited(client, auth, db):
    admin = await auth.user(superuser=True)
    r = await client.post(
        f"{API}/users",
        json={"email": "n@example.com", "password": "password-1"},
        headers=admin.headers,
    )
    uid = r.json()["id"]
    await client.patch(f"{API}/users/{uid}", json={"is_active": False}, headers=admin.headers)
    await client.delete(f"{API}/users/{uid}", headers=admin.headers)
    rows = await entries(db, target_id=uid)
    assert [e.action for e in rows] == ["user.create", "user.update", "user.delete"]
    assert rows[1].details == {"fields": ["is_active"]}
    assert all(e.actor_user_id == admin.user.id for e in rows)


async def test_failed_login_is_persisted_although_the_request_failed(client, auth, db):
    victim = await auth.user(email="victim@example.com")
    r = await client.post(
        f"{API}/auth/login", json={"email": "Victim@example.com", "password": "guess-123"}
    )
    assert r.status_code == 401
    r = await client.post(
        f"{API}/auth/login", json={"email": "ghost@example.com", "password": "guess-123"}
    )
    assert r.status_code == 401
    rows = await entries(db, action="auth.login_failed")
    assert [(e.target_id, e.details["email"]) for e in rows] == [
        (str(victim.user.id), "victim@example.com"),
        (None, "ghost@example.com"),
    ]
    assert all("guess-123" not in str(e.details) for e in rows)
    assert rows[0].request_id is not None


async def test_successful_login_and_logout_are_audited(client, auth, db):
    actor = await auth.user()
    r = await client.post(
        f"{API}/auth/login", json={"email": actor.user.email, "password": PASSWORD}
    )
    await client.post(f"{API}/auth/logout", json={"refresh_token": r.json()["refresh_token"]})
    assert [e.action for e in await entries(db, target_id=str(actor.user.id))] == [
        "auth.login",
        "auth.logout",
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/projects", {"name": ""}),
        ("POST", "/projects", {"name": "ok", "unknown": 1}),
        ("PATCH", "/projects/{pid}", {"budget": {"monthly_token_limit": -1}}),
        ("POST", "/projects/{pid}/members", {"email": "x@example.com", "role": "king"}),
        ("POST", "/api-keys", {"name": "k", "scopes": ["nope"]}),
        ("POST", "/users", {"email": "bad", "password": "password-1"}),
        ("PATCH", "/users/me", {"password": "short"}),
    ],
)
async def test_a_request_that_fails_validation_writes_nothing(client, auth, db, method, path, body):
    superuser = await auth.user(superuser=True)
    project = await auth.project(superuser)
    r = await client.request(
        method, API + path.format(pid=project.id), json=body, headers=superuser.headers
    )
    assert r.status_code == 422, r.text
    assert await count(db) == 0


async def test_a_refused_change_writes_nothing(client, auth, db):
    owner = await auth.user()
    project = await auth.project(owner)
    viewer = await auth.member(project, Role.viewer)
    r = await client.patch(
        f"{API}/projects/{project.id}", json={"name": "x"}, headers=viewer.headers
    )
    assert r.status_code == 403
    r = await client.post(f"{API}/projects", json={"name": project.name}, headers=owner.headers)
    assert r.status_code == 409
    assert await count(db) == 0


def _throwaway_routes(app: FastAPI) -> None:
    router = APIRouter()

    @router.post("/audited/{outcome}")
    async def audited(outcome: str, principal: CurrentPrincipal, session: Session):
        audit.record(session, principal, "test.audited", target_type="test", target_id=outcome)
        if outcome == "fail":
            raise Conflict("the change failed after the audit row was added")
        return {"ok": True}

    app.include_router(router)


async def test_audit_rows_share_the_fate_of_the_request_transaction(settings, client, auth, db):
    actor = await auth.user()
    other = make_settings(settings.DATABASE_URL, settings.REDIS_URL)
    async with running_app(other, setup=_throwaway_routes) as (_, c):
        ok = await c.post("/audited/ok", headers=actor.headers)
        failed = await c.post("/audited/fail", headers=actor.headers)
    assert (ok.status_code, failed.status_code) == (200, 409)
    rows = await entries(db, action="test.audited")
    assert [(e.target_id, e.request_id) for e in rows] == [("ok", ok.headers["x-request-id"])]


async def test_project_audit_log_endpoint(client, auth):
    owner = await auth.user()
    r = await client.post(f"{API}/projects", json={"name": "One"}, headers=owner.headers)
    pid = r.json()["id"]
    r = await client.post(f"{API}/projects", json={"name": "Two"}, headers=owner.headers)
    await client.patch(f"{API}/projects/{pid}", json={"description": "x"}, headers=owner.headers)
    r = await client.get(f"{API}/projects/{pid}/audit-log", headers=owner.headers)
    assert r.status_code == 200
    data = r.json()["data"]
    assert [e["action"] for e in data] == ["project.update", "project.create"]  # newest first
    assert set(data[0]) == {
        "id",
        "actor_user_id",
        "actor_api_key_id",
        "project_id",
        "action",
        "target_type",
        "target_id",
        "details",
        "request_id",
        "created_at",
    }
    assert r.json()["pagination"]["total"] == 2
    r = await client.get(
        f"{API}/projects/{pid}/audit-log", params={"limit": 1}, headers=owner.headers
    )
    assert len(r.json()["data"]) == 1
    assert r.json()["pagination"]["has_next"] is True


async def test_admin_audit_log_is_superuser_only(client, auth):
    owner = await auth.user()
    await client.post(f"{API}/projects", json={"name": "One"}, headers=owner.headers)
    await client.post(f"{API}/auth/login", json={"email": "x@example.com", "password": "nope-nope"})
    r = await client.get(f"{API}/admin/audit-log", headers=owner.headers)
    assert r.status_code == 403
    assert (await client.get(f"{API}/admin/audit-log")).status_code == 401
    superuser = await auth.user(superuser=True)
    r = await client.get(f"{API}/admin/audit-log", headers=superuser.headers)
    assert r.status_code == 200
    assert [e["action"] for e in r.json()["data"]] == ["auth.login_failed", "project.create"]

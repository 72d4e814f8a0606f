"""API keys: shown once, stored as a digest, scoped, project-limited, expiring, revocable."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.routing import iter_route_contexts
from sqlalchemy import select, text

from backend.auth.models import ApiKey
from backend.core.db import utcnow
from backend.core.security import digest
from backend.projects.models import Role

API = "/api/v1"
ALL_SCOPES = sorted(
    ["projects:read", "agents:read", "agents:write", "runs:read", "runs:write", "metrics:read"]
)


async def create_key(client, actor, **body) -> dict:
    r = await client.post(f"{API}/api-keys", json={"name": "ci", **body}, headers=actor.headers)
    assert r.status_code == 201, r.text
    return r.json()


def key_headers(created: dict) -> dict[str, str]:
    return {"X-API-Key": created["key"]}


async def test_key_is_shown_once_and_stored_only_as_a_digest(client, auth, db):
    owner = await auth.user()
    created = await create_key(client, owner, expires_in_days=30)
    raw = created["key"]
    assert raw.startswith("agy_")
    assert len(raw) > 40
    assert created["prefix"] == raw[:12]
    assert created["scopes"] == ALL_SCOPES  # default: every scope
    assert created["project_id"] is None
    assert created["last_used_at"] is None
    assert created["expires_at"] is not None

    listing = await client.get(f"{API}/api-keys", headers=owner.headers)
    assert listing.status_code == 200
    [item] = listing.json()["data"]
    assert "key" not in item
    assert "key_digest" not in item
    assert item["id"] == created["id"]
    assert raw not in listing.text

    row = (
        (await db.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": created["id"]}))
        .mappings()
        .one()
    )
    assert row["key_digest"] == digest(raw)
    assert all(raw not in str(value) for value in row.values())


async def test_key_authenticates_with_x_api_key(client, auth):
    owner = await auth.user()
    created = await create_key(client, owner)
    r = await client.get(f"{API}/users/me", headers=key_headers(created))
    assert r.status_code == 200
    assert r.json()["id"] == str(owner.user.id)
    # As a bearer token the key means nothing.
    r = await client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {created['key']}"})
    assert r.status_code == 401


async def test_listing_shows_only_the_callers_live_keys(client, auth):
    owner, other = await auth.user(), await auth.user()
    mine = await create_key(client, owner)
    revoked = await create_key(client, owner)
    await create_key(client, other)
    assert (
        await client.delete(f"{API}/api-keys/{revoked['id']}", headers=owner.headers)
    ).status_code == 204
    r = await client.get(f"{API}/api-keys", headers=owner.headers)
    assert [k["id"] for k in r.json()["data"]] == [mine["id"]]
    assert r.json()["pagination"]["total"] == 1


async def test_revocation_takes_effect_at_once(client, auth):
    owner = await auth.user()
    created = await create_key(client, owner)
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    r = await client.delete(f"{API}/api-keys/{created['id']}", headers=owner.headers)
    assert r.status_code == 204
    r = await client.get(f"{API}/users/me", headers=key_headers(created))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    # Revoking twice, or someone else's key, is a 404.
    assert (
        await client.delete(f"{API}/api-keys/{created['id']}", headers=owner.headers)
    ).status_code == 404


async def test_cannot_revoke_another_users_key(client, auth):
    owner, other = await auth.user(), await auth.user()
    created = await create_key(client, owner)
    r = await client.delete(f"{API}/api-keys/{created['id']}", headers=other.headers)
    assert r.status_code == 404
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200


async def test_expired_key_is_401(client, auth, db):
    owner = await auth.user()
    created = await create_key(client, owner, expires_in_days=1)
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    key = await db.get(ApiKey, uuid.UUID(created["id"]))
    key.expires_at = utcnow() - timedelta(seconds=1)
    await db.commit()
    r = await client.get(f"{API}/users/me", headers=key_headers(created))
    assert r.status_code == 401


async def test_a_key_cannot_manage_keys_users_or_members(client, auth):
    owner = await auth.user(superuser=True)
    project = await auth.project(owner)
    outsider = await auth.user()
    created = await create_key(client, owner)
    headers = key_headers(created)
    attempts = [
        ("POST", "/api-keys", {"name": "child"}),
        ("GET", "/api-keys", None),
        ("DELETE", f"/api-keys/{created['id']}", None),
        ("GET", "/users", None),
        ("POST", "/users", {"email": "n@example.com", "password": "password-1"}),
        ("PATCH", f"/users/{outsider.user.id}", {"full_name": "x"}),
        (
            "POST",
            f"/projects/{project.id}/members",
            {"email": outsider.user.email, "role": "viewer"},
        ),
        ("PATCH", f"/projects/{project.id}/members/{owner.user.id}", {"role": "viewer"}),
        ("DELETE", f"/projects/{project.id}/members/{owner.user.id}", None),
    ]
    for method, path, body in attempts:
        r = await client.request(method, API + path, json=body, headers=headers)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    # ... and the key still works for what it may do.
    assert (await client.get(f"{API}/projects/{project.id}", headers=headers)).status_code == 200


async def test_project_limited_key_sees_only_its_project(client, auth):
    owner = await auth.user()
    project_a, project_b = await auth.project(owner), await auth.project(owner)
    created = await create_key(client, owner, project_id=str(project_a.id))
    headers = key_headers(created)
    assert created["project_id"] == str(project_a.id)
    assert (await client.get(f"{API}/projects/{project_a.id}", headers=headers)).status_code == 200
    r = await client.get(f"{API}/projects/{project_b.id}", headers=headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await client.get(f"{API}/projects/{project_b.id}/members", headers=headers)
    assert r.status_code == 404
    listing = await client.get(f"{API}/projects", headers=headers)
    assert [p["id"] for p in listing.json()["data"]] == [str(project_a.id)]


async def test_key_for_a_project_you_cannot_see_is_404(client, auth):
    owner, stranger = await auth.user(), await auth.user()
    project = await auth.project(owner)
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "x", "project_id": str(project.id)},
        headers=stranger.headers,
    )
    assert r.status_code == 404
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "x", "project_id": str(uuid.uuid4())},
        headers=owner.headers,
    )
    assert r.status_code == 404


async def test_scopes_are_enforced(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    reader = await create_key(client, owner, scopes=["projects:read"])
    no_read = await create_key(client, owner, scopes=["runs:read"])
    assert reader["scopes"] == ["projects:read"]
    r = await client.get(f"{API}/projects/{project.id}", headers=key_headers(reader))
    assert r.status_code == 200
    r = await client.get(f"{API}/projects/{project.id}", headers=key_headers(no_read))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = await client.get(f"{API}/projects", headers=key_headers(no_read))
    assert r.status_code == 403
    for bad in (["projects:write"], [], ["admin"]):
        r = await client.post(
            f"{API}/api-keys", json={"name": "x", "scopes": bad}, headers=owner.headers
        )
        assert r.status_code == 422, bad


async def test_a_key_never_grants_more_than_its_owner(client, auth, app):
    owner = await auth.user()
    project = await auth.project(owner)
    viewer = await auth.member(project, Role.viewer)
    created = await create_key(client, viewer, scopes=["projects:read", "agents:write"])
    headers = key_headers(created)
    assert (await client.get(f"{API}/projects/{project.id}", headers=headers)).status_code == 200
    # Member-level and admin-level routes stay closed although the key claims agents:write.
    r = await client.patch(f"{API}/projects/{project.id}", json={"name": "x"}, headers=headers)
    assert r.status_code == 403
    r = await client.get(f"{API}/projects/{project.id}/audit-log", headers=headers)
    assert r.status_code == 403
    spawn = [
        c
        for c in iter_route_contexts(app.routes)
        if c.path == "/api/v1/projects/{project_id}/agents" and "POST" in (c.methods or ())
    ]
    if spawn:  # the agents team's member-only route, once it exists
        r = await client.post(
            f"{API}/projects/{project.id}/agents",
            json={"agent_type_id": str(uuid.uuid4()), "name": "a"},
            headers=headers,
        )
        assert r.status_code == 403, r.text


async def test_member_only_permission_checks_the_owner_role_before_the_scope(auth, db):
    # Direct check of the gate for a member-only permission (agents:write), whatever routes exist.
    from backend.auth.dependencies import Principal
    from backend.core.errors import Forbidden
    from backend.projects.dependencies import Permission, resolve_project

    owner = await auth.user()
    project = await auth.project(owner)
    viewer = await auth.member(project, Role.viewer)
    member = await auth.member(project, Role.member)
    for actor, expect_ok in ((viewer, False), (member, True)):
        await auth.api_key(actor, scopes=["agents:write"])
        key = await db.scalar(select(ApiKey).where(ApiKey.user_id == actor.user.id))
        principal = Principal(actor.user, key)
        try:
            await resolve_project(db, principal, project.id, Permission.agents_write)
            ok = True
        except Forbidden:
            ok = False
        assert ok is expect_ok


async def test_last_used_at_is_set_on_first_use_and_not_rewritten_at_once(client, auth, db):
    owner = await auth.user()
    created = await create_key(client, owner)
    key_id = uuid.UUID(created["id"])

    async def last_used():
        db.expire_all()
        return await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    assert await last_used() is None
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    first = await last_used()
    assert first is not None
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    assert await last_used() == first  # no write per request
    listing = await client.get(f"{API}/api-keys", headers=owner.headers)
    assert listing.json()["data"][0]["last_used_at"] is not None


async def test_last_used_at_is_not_rewritten_even_by_another_process(client, auth, db):
    # The conditional UPDATE (older than the resolution) holds across API processes, whose
    # in-memory throttle is empty.
    from backend.auth import dependencies

    owner = await auth.user()
    created = await create_key(client, owner)
    key_id = uuid.UUID(created["id"])
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    first = await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
    dependencies._last_used_written.pop(key_id, None)  # as if served by a fresh process
    assert (await client.get(f"{API}/users/me", headers=key_headers(created))).status_code == 200
    db.expire_all()
    assert await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) == first

"""Superuser user administration; deactivation ends tokens and API keys at once."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from backend.auth.models import RefreshToken, User
from tests.support.auth import PASSWORD

API = "/api/v1"


@pytest.fixture
async def admin(auth):
    return await auth.user(superuser=True)


async def test_superuser_lists_users_paginated(client, auth, admin):
    for _ in range(3):
        await auth.user()
    r = await client.get(f"{API}/users", params={"limit": 2}, headers=admin.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert len(page["data"]) == 2
    assert page["pagination"] == {
        "total": 4,
        "page": 1,
        "limit": 2,
        "total_pages": 2,
        "has_next": True,
        "has_prev": False,
    }
    assert all("hashed_password" not in u and "token_version" not in u for u in page["data"])
    r = await client.get(f"{API}/users", params={"page": 2, "limit": 2}, headers=admin.headers)
    assert len(r.json()["data"]) == 2
    assert r.json()["pagination"]["has_prev"] is True


async def test_superuser_creates_a_superuser_who_can_log_in(client, admin):
    r = await client.post(
        f"{API}/users",
        json={"email": "Root2@example.com", "password": "password-2", "is_superuser": True},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["is_superuser"] is True
    assert r.json()["email"] == "root2@example.com"
    r = await client.post(
        f"{API}/auth/login", json={"email": "root2@example.com", "password": "password-2"}
    )
    assert r.status_code == 200
    r = await client.post(
        f"{API}/users",
        json={"email": "root2@example.com", "password": "password-2"},
        headers=admin.headers,
    )
    assert r.status_code == 409


async def test_superuser_gets_updates_and_deletes_a_user(client, auth, admin, db):
    target = await auth.user()
    url = f"{API}/users/{target.user.id}"
    r = await client.get(url, headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["email"] == target.user.email
    r = await client.patch(
        url, json={"full_name": "Renamed", "email": "NEW@example.com"}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    assert (r.json()["full_name"], r.json()["email"]) == ("Renamed", "new@example.com")
    r = await client.delete(url, headers=admin.headers)
    assert r.status_code == 204
    assert (await client.get(url, headers=admin.headers)).status_code == 404
    assert await db.scalar(select(User).where(User.id == target.user.id)) is None
    r = await client.delete(f"{API}/users/{uuid.uuid4()}", headers=admin.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_email_change_to_a_taken_email_is_409(client, auth, admin):
    one, two = await auth.user(), await auth.user()
    r = await client.patch(
        f"{API}/users/{one.user.id}", json={"email": two.user.email}, headers=admin.headers
    )
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "email"


async def test_admin_password_reset_ends_sessions(client, auth, admin):
    target = await auth.user()
    r = await client.patch(
        f"{API}/users/{target.user.id}", json={"password": "reset-pass-1"}, headers=admin.headers
    )
    assert r.status_code == 200
    assert (await client.get(f"{API}/users/me", headers=target.headers)).status_code == 401
    r = await client.post(
        f"{API}/auth/login", json={"email": target.user.email, "password": "reset-pass-1"}
    )
    assert r.status_code == 200


async def test_superuser_cannot_deactivate_demote_or_delete_self(client, admin):
    url = f"{API}/users/{admin.user.id}"
    for body in ({"is_active": False}, {"is_superuser": False}):
        r = await client.patch(url, json=body, headers=admin.headers)
        assert r.status_code == 409, r.text
    assert (await client.delete(url, headers=admin.headers)).status_code == 409
    assert (await client.get(f"{API}/users/me", headers=admin.headers)).status_code == 200


async def test_deleting_a_user_who_owns_a_project_is_409(client, auth, admin):
    owner = await auth.user()
    await auth.project(owner)
    r = await client.delete(f"{API}/users/{owner.user.id}", headers=admin.headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"


async def test_deleting_the_owner_of_a_deleted_project_is_a_clear_409(client, auth, admin):
    owner = await auth.user()
    project = await auth.project(owner)
    r = await client.delete(f"{API}/projects/{project.id}", headers=owner.headers)
    assert r.status_code == 204
    r = await client.delete(f"{API}/users/{owner.user.id}", headers=admin.headers)
    assert r.status_code == 409, r.text
    assert "deactivate" in r.json()["error"]["message"]
    assert (await client.get(f"{API}/users/{owner.user.id}", headers=admin.headers)).is_success


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users", None),
        ("POST", "/users", {"email": "n@example.com", "password": "password-1"}),
        ("GET", "/users/{id}", None),
        ("PATCH", "/users/{id}", {"full_name": "x"}),
        ("DELETE", "/users/{id}", None),
    ],
)
async def test_user_admin_is_superuser_only_and_never_by_api_key(client, auth, method, path, body):
    target = await auth.user()
    url = API + path.format(id=target.user.id)
    plain = await auth.user()
    superuser = await auth.user(superuser=True)
    su_key = await auth.api_key(superuser)
    for actor in (plain, su_key):
        r = await client.request(method, url, json=body, headers=actor.headers)
        assert r.status_code == 403, (actor.headers.keys(), r.text)
        assert r.json()["error"]["code"] == "forbidden"
    r = await client.request(method, url, json=body)
    assert r.status_code == 401
    r = await client.request(method, url, json=body, headers=superuser.headers)
    assert r.is_success, r.text


async def test_deactivation_stops_tokens_and_keys_at_once(client, auth, admin, db):
    target = await auth.user()
    key = await auth.api_key(target)
    login = await client.post(
        f"{API}/auth/login", json={"email": target.user.email, "password": PASSWORD}
    )
    refresh_token = login.json()["refresh_token"]
    for headers in (target.headers, key.headers):
        assert (await client.get(f"{API}/users/me", headers=headers)).status_code == 200

    r = await client.patch(
        f"{API}/users/{target.user.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200
    assert r.json()["is_active"] is False

    for headers in (target.headers, key.headers):
        r = await client.get(f"{API}/users/me", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})
    assert r.status_code == 401
    live = await db.scalars(
        select(RefreshToken).where(
            RefreshToken.user_id == target.user.id, RefreshToken.revoked_at.is_(None)
        )
    )
    assert live.all() == []

    # Reactivation revives the API key (it was never revoked) but not the old access token.
    r = await client.patch(
        f"{API}/users/{target.user.id}", json={"is_active": True}, headers=admin.headers
    )
    assert r.status_code == 200
    assert (await client.get(f"{API}/users/me", headers=key.headers)).status_code == 200
    assert (await client.get(f"{API}/users/me", headers=target.headers)).status_code == 401

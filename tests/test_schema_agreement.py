"""What /openapi.json allows is accepted and what it forbids is refused (found by schemathesis;
each case here pinned so it fails without its fix)."""

from __future__ import annotations

import pytest

API = "/api/v1"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/projects", "GET, POST"),
        ("PUT", "/users/me", "GET, PATCH"),
        ("DELETE", "/users/me", "GET, PATCH"),  # not DELETE /users/{user_id}'s 422
        ("PUT", "/projects/{p}", "DELETE, GET, PATCH"),
        ("PATCH", "/projects/{p}/agents/metrics", "GET"),  # not PATCH …/agents/{agent_id}'s 422
    ],
)
async def test_405_names_every_method_of_the_path(client, auth, method, path, allow) -> None:
    owner = await auth.user(superuser=True)  # others may be refused (403) before the path
    project = await auth.project(owner)
    url = API + path.replace("{p}", str(project.id))
    r = await client.request(method, url, headers=owner.headers)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_creates_say_where_the_new_object_is(client, auth) -> None:
    admin = await auth.user(superuser=True)
    r = await client.post(f"{API}/projects", json={"name": "P"}, headers=admin.headers)
    assert r.headers["location"] == f"{API}/projects/{r.json()['id']}"
    body = {"email": "loc@example.com", "password": "password1"}
    r = await client.post(f"{API}/users", json=body, headers=admin.headers)
    assert r.headers["location"] == f"{API}/users/{r.json()['id']}"
    body = {"name": "T", "slug": "t", "provider": "fake", "model": "fake-echo"}
    r = await client.post(f"{API}/agent-types", json=body, headers=admin.headers)
    assert r.headers["location"] == f"{API}/agent-types/{r.json()['id']}"
    assert (await client.get(r.headers["location"], headers=admin.headers)).status_code == 200


@pytest.mark.parametrize(
    "budget",
    [
        {"monthly_token_limit": False},  # a boolean is not an integer
        {"monthly_token_limit": "5"},
        {"monthly_cost_limit_usd": "1e3"},  # decimal strings only
        {"monthly_cost_limit_usd": True},
        {"monthly_cost_limit_usd": " 5"},
    ],
)
async def test_values_the_schema_forbids_are_refused(client, auth, budget) -> None:
    owner = await auth.user()
    r = await client.post(
        f"{API}/projects", json={"name": "P", "budget": budget}, headers=owner.headers
    )
    assert r.status_code == 422, r.text


async def test_values_the_schema_allows_are_accepted(client, auth) -> None:
    owner = await auth.user()
    budget = {"monthly_cost_limit_usd": 1.12345678, "monthly_token_limit": 5.0}
    r = await client.post(
        f"{API}/projects", json={"name": "P", "budget": budget}, headers=owner.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["budget"] == {"monthly_cost_limit_usd": 1.123457, "monthly_token_limit": 5}
    # A special-use domain is a well-formed address (email-validator alone refused it).
    r = await client.post(
        f"{API}/auth/register", json={"email": "Dev@Box.TEST", "password": "password1"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["email"] == "dev@box.test"


async def test_nul_in_a_name_is_a_validation_error_of_that_field(client, auth) -> None:
    owner = await auth.user()
    r = await client.post(f"{API}/projects", json={"name": "a\x00b"}, headers=owner.headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "name"
    r = await client.post(f"{API}/projects", json={"name": " \x1c "}, headers=owner.headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "name"


async def test_users_boolean_fields_take_booleans_only(client, auth) -> None:
    admin = await auth.user(superuser=True)
    other = await auth.user()
    url = f"{API}/users/{other.user.id}"
    r = await client.patch(url, json={"is_active": 0}, headers=admin.headers)
    assert r.status_code == 422, r.text
    r = await client.patch(url, json={"is_active": False}, headers=admin.headers)
    assert r.status_code == 200

"""Free-form JSON fields: nested deeper than 32 levels is a 422 naming the field, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

API = "/api/v1"


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep (an object or array counts one level), arrays inside."""
    value: Any = {"leaf": 1}
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    if isinstance(value, list):
        value = {"k": value[0]}  # the field itself is an object
    assert depth > 100 or depth_of(value) == depth
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@pytest.fixture
async def setup(client, auth):
    admin = await auth.user(superuser=True)
    project = await auth.project(admin)
    response = await client.post(
        f"{API}/agent-types",
        # Not `fake`: its config has a strict schema; other providers' config is free-form.
        json={"name": "GPT", "slug": "gpt", "provider": "openai", "model": "gpt-4o-mini"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    type_id = response.json()["id"]
    agents = f"{API}/projects/{project.id}/agents"
    response = await client.post(
        agents, json={"agent_type_id": type_id, "name": "a"}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    agent_id = response.json()["id"]
    return admin, type_id, agents, agent_id


def requests_for(field: str, type_id: str, agents: str, agent_id: str, value: Any):
    """(method, url, body) putting `value` in `field`, one request per place it is accepted."""
    if field == "config":
        slug = f"t-{uuid.uuid4().hex[:8]}"
        base = {"name": "T", "slug": slug, "provider": "openai", "model": "gpt-4o-mini"}
        return [
            ("POST", f"{API}/agent-types", {**base, "config": value}),
            ("PATCH", f"{API}/agent-types/{type_id}", {"config": value}),
        ]
    if field == "short_term_memory":
        spawn = {"agent_type_id": type_id, "name": f"n-{uuid.uuid4().hex[:6]}"}
        return [
            ("POST", agents, {**spawn, "short_term_memory": value}),
            ("PATCH", f"{agents}/{agent_id}", {"short_term_memory": value}),
        ]
    assert field == "metadata"
    return [("POST", f"{agents}/{agent_id}/runs", {"input": "hi", "metadata": value})]


@pytest.mark.parametrize("field", ["config", "short_term_memory", "metadata"])
async def test_json_fields_accept_32_levels_and_refuse_33(client, setup, field) -> None:
    admin, type_id, agents, agent_id = setup
    for depth, accepted in ((32, True), (33, False), (300, False), (900, False)):
        for method, url, body in requests_for(field, type_id, agents, agent_id, nested(depth)):
            response = await client.request(method, url, json=body, headers=admin.headers)
            if accepted:
                assert response.status_code in (200, 201, 202), (method, url, response.text)
                assert depth_of(response.json()[field]) == depth
            else:
                assert response.status_code == 422, (depth, method, url, response.text)
                error = response.json()["error"]
                assert error["code"] == "validation_error"
                assert error["field"] == field


async def test_a_body_too_deep_for_the_json_parser_is_a_422(client, setup) -> None:
    admin, _type_id, agents, agent_id = setup
    for body in ("[" * 100_000 + "]" * 100_000, '{"input": "x", "metadata": ' + "[" * 100_000):
        response = await client.post(
            f"{agents}/{agent_id}/runs",
            content=body,
            headers={**admin.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"

"""The webhook endpoints' API: admin+ with a login, secrets shown once, URLs checked, audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.audit.models import AuditLog
from backend.projects.models import Role
from backend.webhooks.models import WebhookEndpoint
from tests.runs.conftest import World
from tests.webhooks.conftest import Hooks

URL = "http://127.0.0.1:9/hook"


@pytest.mark.parametrize(
    ("who", "expected"),
    [("owner", 201), ("admin", 201), ("member", 403), ("viewer", 403), ("outsider", 404)],
)
async def test_only_admins_manage_webhooks(
    world: World, hooks: Hooks, who: str, expected: int
) -> None:
    if who == "owner":
        actor = world.owner
    elif who == "outsider":
        actor = await world.auth.user()
    else:
        actor = await world.auth.member(world.project, Role(who))
    response = await world.client.post(
        hooks.base, json={"url": URL, "events": ["*"]}, headers=actor.headers
    )
    assert response.status_code == expected, response.text
    listed = await world.client.get(hooks.base, headers=actor.headers)
    assert listed.status_code == (200 if expected == 201 else expected)


async def test_api_keys_are_refused_on_every_webhook_route(world: World, hooks: Hooks) -> None:
    hook = await hooks.create(URL)
    key = await world.auth.api_key(world.owner, project=world.project)
    base, wid = hooks.base, hook["id"]
    routes = [
        ("POST", base, {"url": URL, "events": ["*"]}),
        ("GET", base, None),
        ("GET", f"{base}/{wid}", None),
        ("PATCH", f"{base}/{wid}", {"enabled": False}),
        ("DELETE", f"{base}/{wid}", None),
        ("POST", f"{base}/{wid}/rotate-secret", None),
        ("POST", f"{base}/{wid}/test", None),
        ("GET", f"{base}/{wid}/deliveries", None),
        ("POST", f"{base}/{wid}/deliveries/{wid}/redeliver", None),
    ]
    for method, path, body in routes:
        response = await world.client.request(method, path, json=body, headers=key.headers)
        assert response.status_code == 403, (method, path, response.text)


async def test_the_secret_is_shown_once_and_stored_encrypted(world: World, hooks: Hooks) -> None:
    hook = await hooks.create(URL, ["run.status_changed"], description="CI")
    assert hook["secret"].startswith("whsec_")
    assert {k: hook[k] for k in ("url", "events", "description", "enabled")} == {
        "url": URL,
        "events": ["run.status_changed"],
        "description": "CI",
        "enabled": True,
    }
    got = await hooks.call("GET", f"/{hook['id']}")
    listed = await hooks.call("GET", "")
    assert "secret" not in got
    assert [set(item) for item in listed["data"]] == [set(got)]
    rotated = await hooks.call("POST", f"/{hook['id']}/rotate-secret")
    async with world.sessions() as session:
        row = await session.get(WebhookEndpoint, hook["id"])
        audit = list(await session.scalars(select(AuditLog).order_by(AuditLog.created_at)))
    stored = f"{row.secret_encrypted} {row.previous_secret_encrypted}"
    for secret in (hook["secret"], rotated["secret"]):
        assert secret not in stored
        assert secret.removeprefix("whsec_") not in stored
        assert all(secret not in str(entry.details) for entry in audit)
    assert [e.action for e in audit] == ["webhook.create", "webhook.rotate_secret"]


async def test_update_delete_and_their_audit(world: World, hooks: Hooks) -> None:
    hook = await hooks.create(URL)
    path = f"/{hook['id']}"
    patched = await hooks.call(
        "PATCH", path, json={"events": ["agent.status_changed"], "enabled": False}
    )
    assert (patched["events"], patched["enabled"]) == (["agent.status_changed"], False)
    await hooks.call("PATCH", path, expect=422, json={"url": None})
    await hooks.call("POST", f"{path}/test", expect=202)
    await hooks.call("DELETE", path, expect=204)
    await hooks.call("GET", path, expect=404)
    async with world.sessions() as session:
        actions = list(await session.scalars(select(AuditLog.action).order_by(AuditLog.created_at)))
    assert actions == ["webhook.create", "webhook.update", "webhook.test", "webhook.delete"]


async def test_another_projects_webhook_is_not_found(world: World, hooks: Hooks) -> None:
    hook = await hooks.create(URL)
    other = await world.auth.project(world.owner)
    base = f"/api/v1/projects/{other.id}/webhooks/{hook['id']}"
    response = await world.client.get(base, headers=world.owner.headers)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": URL, "events": []}, "events"),
        ({"url": URL, "events": ["run.finished"]}, "events"),
    ],
)
async def test_invalid_bodies_are_422(world: World, hooks: Hooks, body: dict, field: str) -> None:
    response = await world.client.post(hooks.base, json=body, headers=world.owner.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].startswith(field)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
async def test_private_urls_are_refused_outside_dev_mode(world: World, url: str) -> None:
    base = f"/api/v1/projects/{world.project.id}/webhooks"
    response = await world.client.post(
        base, json={"url": url, "events": ["*"]}, headers=world.owner.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "url"


async def test_private_urls_are_allowed_by_the_setting(world: World, hooks: Hooks) -> None:
    assert (await hooks.create("http://127.0.0.1:8080/hook"))["url"].startswith("http://127")


async def test_a_public_address_is_accepted(world: World) -> None:
    base = f"/api/v1/projects/{world.project.id}/webhooks"
    response = await world.client.post(
        base,
        json={"url": "https://93.184.215.14/hook", "events": ["*"]},
        headers=world.owner.headers,
    )
    assert response.status_code == 201, response.text

"""Agent types' tools (API.md "Agent types", "Tools"): client tools, MCP servers with write-only
headers, step and timeout bounds, the fake provider's script; every rule a 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from backend.agent_types.models import AgentType
from backend.agent_types.tools import mcp_servers_for_worker
from backend.audit.models import AuditLog

URL = "/api/v1/agent-types"
LOOKUP = {
    "name": "lookup",
    "description": "Look a customer up",
    "input_schema": {"type": "object", "properties": {"email": {"type": "string"}}},
}
DEMO = {
    "name": "demo",
    "url": "http://127.0.0.1:8765/mcp",
    "headers": {"Authorization": "Bearer s3cr3t", "X-Tenant": "acme"},
    "allowed_tools": ["add", "word_count"],
    "require_approval": ["add"],
}


def spec(**overrides: Any) -> dict[str, Any]:
    return {"name": "Tooly", "slug": "tooly", "provider": "fake", "model": "fake-echo", **overrides}


async def stored(db, slug: str = "tooly") -> AgentType:
    query = select(AgentType).where(AgentType.slug == slug)
    row = await db.scalar(query.execution_options(populate_existing=True))
    assert row is not None
    return row


async def test_tools_and_servers_round_trip_with_headers_never_returned(
    client, auth, db, settings
) -> None:
    h = (await auth.user(superuser=True)).headers
    r = await client.post(
        URL,
        json=spec(tools=[LOOKUP], mcp_servers=[DEMO], max_steps=5, tool_timeout_seconds=9),
        headers=h,
    )

    assert r.status_code == 201, r.text
    created = r.json()
    assert created["tools"] == [LOOKUP]
    assert created["mcp_servers"] == [
        {**DEMO, "headers": {"Authorization": "***", "X-Tenant": "***"}}
    ]
    assert (created["max_steps"], created["tool_timeout_seconds"]) == (5, 9)
    assert created["action_timeout_seconds"] == 3600
    assert (await client.get(f"{URL}/{created['id']}", headers=h)).json() == created
    listed = (await client.get(URL, headers=h)).json()["data"][0]
    assert listed["mcp_servers"][0]["headers"] == {"Authorization": "***", "X-Tenant": "***"}
    assert "s3cr3t" not in r.text + str(listed)
    # At rest: encrypted, not the secret; the worker gets it back in plain text.
    row = await stored(db)
    assert "s3cr3t" not in str(row.mcp_servers)
    [server] = mcp_servers_for_worker(row.mcp_servers, settings.secret_key)
    assert server == DEMO
    # Nor does the audit log keep it.
    details = await db.scalars(select(AuditLog.details).where(AuditLog.action.like("agent_type%")))
    assert "s3cr3t" not in str(list(details))


async def test_defaults(client, auth) -> None:
    h = (await auth.user(superuser=True)).headers
    created = (await client.post(URL, json=spec(), headers=h)).json()
    assert (created["tools"], created["mcp_servers"]) == ([], [])
    assert (created["max_steps"], created["tool_timeout_seconds"]) == (16, 60)
    assert created["action_timeout_seconds"] == 3600
    tool = {"name": "ping"}
    server = {"name": "s", "url": "https://mcp.example.com/mcp"}
    r = await client.patch(
        f"{URL}/{created['id']}", json={"tools": [tool], "mcp_servers": [server]}, headers=h
    )
    assert r.json()["tools"] == [
        {"name": "ping", "description": "", "input_schema": {"type": "object", "properties": {}}}
    ]
    assert r.json()["mcp_servers"] == [
        {**server, "headers": {}, "allowed_tools": None, "require_approval": "never"}
    ]


async def test_an_update_may_send_back_masked_headers_to_keep_them(
    client, auth, db, settings
) -> None:
    h = (await auth.user(superuser=True)).headers
    created = (await client.post(URL, json=spec(mcp_servers=[DEMO]), headers=h)).json()
    one = f"{URL}/{created['id']}"
    tokens = (await stored(db)).mcp_servers[0]["headers"]

    # What was read, sent back with one header changed (names are case-insensitive).
    read = created["mcp_servers"][0]
    body = {**read, "headers": {"authorization": "***", "X-Tenant": "globex"}}
    r = await client.patch(one, json={"mcp_servers": [body]}, headers=h)

    assert r.status_code == 200, r.text
    assert r.json()["mcp_servers"][0]["headers"] == {"authorization": "***", "X-Tenant": "***"}
    row = await stored(db)
    assert row.mcp_servers[0]["headers"]["authorization"] == tokens["Authorization"]
    [server] = mcp_servers_for_worker(row.mcp_servers, settings.secret_key)
    assert server["headers"] == {"authorization": "Bearer s3cr3t", "X-Tenant": "globex"}
    # Only the same server's stored value can be kept: a renamed server has none.
    renamed = {**read, "name": "other"}
    r = await client.patch(one, json={"mcp_servers": [renamed]}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "mcp_servers.0.headers.Authorization"
    # A header that was never set cannot be "kept"; on create nothing is stored at all.
    r = await client.patch(
        one, json={"mcp_servers": [{**read, "headers": {"X-New": "***"}}]}, headers=h
    )
    assert r.json()["error"]["field"] == "mcp_servers.0.headers.X-New"
    r = await client.post(URL, json=spec(slug="t2", mcp_servers=[read]), headers=h)
    assert r.status_code == 422
    # Replacing the list drops what is not sent.
    r = await client.patch(one, json={"mcp_servers": []}, headers=h)
    assert r.json()["mcp_servers"] == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [{**LOOKUP, "name": "has space"}]}, "tools.0.name"),
        ({"tools": [{**LOOKUP, "name": "x" * 65}]}, "tools.0.name"),
        ({"tools": [LOOKUP, LOOKUP]}, "tools.1.name"),
        ({"tools": [{**LOOKUP, "input_schema": {"type": "string"}}]}, "tools.0.input_schema"),
        ({"tools": [{**LOOKUP, "input_schema": {"properties": {}}}]}, "tools.0.input_schema"),
        (
            {"tools": [{**LOOKUP, "input_schema": {"type": "object", "properties": 5}}]},
            "tools.0.input_schema",
        ),
        (
            {"tools": [{**LOOKUP, "input_schema": {"type": "object", "required": "email"}}]},
            "tools.0.input_schema",
        ),
        ({"tools": [{**LOOKUP, "description": "a\x00b"}]}, "tools.0.description"),
        ({"tools": [{**LOOKUP, "extra": 1}]}, "tools.0.extra"),
        ({"mcp_servers": [{**DEMO, "name": "my__demo"}]}, "mcp_servers.0.name"),
        ({"mcp_servers": [DEMO, DEMO]}, "mcp_servers.1.name"),
        ({"mcp_servers": [DEMO], "tools": [{**LOOKUP, "name": "demo__add"}]}, "tools.0.name"),
        ({"mcp_servers": [{**DEMO, "url": "ftp://example.com/mcp"}]}, "mcp_servers.0.url"),
        ({"mcp_servers": [{**DEMO, "url": "http://u:p@example.com/"}]}, "mcp_servers.0.url"),
        ({"mcp_servers": [{**DEMO, "url": "http://example.com:99999/"}]}, "mcp_servers.0.url"),
        ({"mcp_servers": [{**DEMO, "allowed_tools": ["a b"]}]}, "mcp_servers.0.allowed_tools.0"),
        ({"mcp_servers": [{**DEMO, "allowed_tools": ["a", "a"]}]}, "mcp_servers.0.allowed_tools"),
        ({"mcp_servers": [{**DEMO, "require_approval": "sometimes"}]}, "mcp_servers.0"),
        ({"mcp_servers": [{**DEMO, "require_approval": ["rm"]}]}, "mcp_servers.0"),
        ({"mcp_servers": [{**DEMO, "headers": {"Bad Name": "x"}}]}, "mcp_servers.0.headers"),
        ({"mcp_servers": [{**DEMO, "headers": {"X-A": "a\r\nb"}}]}, "mcp_servers.0.headers"),
        ({"mcp_servers": [{**DEMO, "headers": {"X-A": "1", "x-a": "2"}}]}, "mcp_servers.0"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": 101}, "max_steps"),
        ({"tool_timeout_seconds": 3601}, "tool_timeout_seconds"),
        ({"action_timeout_seconds": 604_801}, "action_timeout_seconds"),
        ({"action_timeout_seconds": 0}, "action_timeout_seconds"),
    ],
)
async def test_invalid_tools_are_422_naming_the_field(client, auth, fields, field) -> None:
    h = (await auth.user(superuser=True)).headers
    r = await client.post(URL, json=spec(**fields), headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["field"].startswith(field), r.json()["error"]


async def test_names_are_checked_against_what_the_update_keeps(client, auth) -> None:
    h = (await auth.user(superuser=True)).headers
    created = (await client.post(URL, json=spec(mcp_servers=[DEMO]), headers=h)).json()
    one = f"{URL}/{created['id']}"
    r = await client.patch(one, json={"tools": [{**LOOKUP, "name": "demo__x"}]}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "tools.0.name"
    assert "demo" in r.json()["error"]["message"]
    # Without the server, the same tool name is fine.
    ok = await client.patch(
        one, json={"mcp_servers": [], "tools": [{**LOOKUP, "name": "demo__x"}]}, headers=h
    )
    assert ok.status_code == 200, ok.text


async def test_the_fake_script_is_accepted_and_checked_by_the_provider(client, auth) -> None:
    h = (await auth.user(superuser=True)).headers
    script = [
        {"tool_calls": [{"name": "demo__add", "arguments": {"a": 1, "b": 2}}]},
        {"tool_calls": [{"name": "lookup"}]},
        {"text": "done"},
    ]
    r = await client.post(URL, json=spec(config={"script": script}), headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["script"] == script
    one = f"{URL}/{r.json()['id']}"
    for bad, field in [
        ([{"text": 1}], "config.script.0.text"),
        ([{"text": "a"}, {"tool_calls": []}], "config.script.1.tool_calls"),
        ([{"text": "a", "tool_calls": [{"name": "x"}]}], "config.script.0"),
        ([{"tool_calls": [{"name": "not ok"}]}], "config.script.0.tool_calls.0.name"),
        (
            [{"tool_calls": [{"name": "x", "arguments": [1]}]}],
            "config.script.0.tool_calls.0.arguments",
        ),
        ([{}], "config.script.0"),
        ({"text": "a"}, "config.script"),
    ]:
        r = await client.patch(one, json={"config": {"script": bad}}, headers=h)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["field"] == field, (bad, r.json()["error"])


async def test_a_header_that_no_longer_decrypts_is_left_out_for_the_worker(
    client, auth, db, settings
) -> None:
    h = (await auth.user(superuser=True)).headers
    assert (await client.post(URL, json=spec(mcp_servers=[DEMO]), headers=h)).status_code == 201
    row = await stored(db)

    # As after a SECRET_KEY rotation: the server is still offered, without its headers.
    [server] = mcp_servers_for_worker(row.mcp_servers, "another-secret-key-" + "y" * 32)

    assert server == {**DEMO, "headers": {}}

"""An MCP server's headers, written through the API (encrypted at rest), reach the server
in plain text when the worker calls it."""

from __future__ import annotations

from sqlalchemy import select

from backend.agent_types.models import AgentType
from tests.runs.conftest import World
from tests.tools.mcp_server import serve_test_server


async def test_the_worker_sends_the_decrypted_headers(world: World, worker) -> None:
    admin = await world.auth.user(superuser=True)
    async with serve_test_server(require_auth="Bearer s3cr3t") as server:
        body = {
            "name": "Authed",
            "slug": "authed",
            "provider": "fake",
            "model": "fake-echo",
            "config": {
                "script": [{"tool_calls": [{"name": "test__add", "arguments": {"a": 2, "b": 3}}]}]
            },
            "mcp_servers": [
                {"name": "test", "url": server.url, "headers": {"Authorization": "Bearer s3cr3t"}}
            ],
        }
        r = await world.client.post("/api/v1/agent-types", json=body, headers=admin.headers)
        assert r.status_code == 201, r.text
        agent_type = await world.db.scalar(select(AgentType).where(AgentType.slug == "authed"))
        agent = await world.agent(agent_type)

        run = await world.finished((await world.submit(agent, "add"))["id"])

    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == "echo: 5"
    assert {seen.authorization for seen in server.requests} == {"Bearer s3cr3t"}

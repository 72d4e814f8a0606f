"""The tools a run's model steps are offered (API.md "Tools"): the agent type's client tools,
and its MCP servers' tools as `<server>__<tool>` (discovered through the worker's McpTools,
briefly cached). Who executes a call: the caller (client tools) or the worker (server tools,
after a person's approval when the server requires it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from backend.agent_types.tools import mcp_servers_for_worker
from backend.runs.attempt import Claimed
from backend.runs.providers import ToolCall, ToolSpec
from backend.tools.mcp import McpServer, McpTools, ServerTool, ToolResult

# Discovery is bounded apart from calls: a server slow to list its tools must not eat a step.
DISCOVERY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Toolbox:
    specs: tuple[ToolSpec, ...] = ()
    clients: frozenset[str] = frozenset()
    servers: dict[str, tuple[McpServer, ServerTool]] = field(default_factory=dict)
    configured: dict[str, McpServer] = field(default_factory=dict)

    def executor(self, name: str) -> Literal["client", "server"]:
        """A name the model was not offered is the worker's to answer (with an error)."""
        return "client" if name in self.clients else "server"

    def needs_approval(self, name: str) -> bool:
        found = self.servers.get(name)
        if found is not None:
            return found[1].needs_approval
        server, _, tool = name.partition("__")
        return server in self.configured and self.configured[server].needs_approval(tool)

    async def call(self, mcp: McpTools, call: ToolCall, *, timeout: float) -> ToolResult:
        found = self.servers.get(call.name)
        if found is not None:
            return await mcp.call(found[0], found[1].tool, call.arguments, timeout=timeout)
        # Not listed: its server may have been unreachable when the tools were listed (or
        # when the model step that asked for it ran, before a crash): the call says so.
        name, _, tool = call.name.partition("__")
        server = self.configured.get(name)
        if server is not None and tool and server.allows(tool):
            return await mcp.call(server, tool, call.arguments, timeout=timeout)
        return ToolResult(f"unknown tool {call.name[:64]!r}", is_error=True)


async def offer(mcp: McpTools, c: Claimed, secret_key: str) -> Toolbox:
    """`secret_key` decrypts the MCP servers' headers (agent_types.tools)."""
    clients = [ToolSpec(t["name"], t.get("description") or "", t["input_schema"]) for t in c.tools]
    if not c.mcp_servers:
        return Toolbox(tuple(clients), frozenset(t.name for t in clients))
    plain = mcp_servers_for_worker(c.mcp_servers, secret_key)
    servers = {s.name: s for s in map(mcp_server, plain)}
    timeout = min(c.tool_timeout, DISCOVERY_TIMEOUT_SECONDS)
    listed = await mcp.list_tools(list(servers.values()), timeout=timeout)
    offered = [ToolSpec(t.offered_name, t.description, t.input_schema) for t in listed]
    return Toolbox(
        (*clients, *offered),
        frozenset(t.name for t in clients),
        {t.offered_name: (servers[t.server], t) for t in listed},
        servers,
    )


def mcp_server(entry: dict[str, Any]) -> McpServer:
    """An `mcp_servers` entry, its headers decrypted, as the MCP client takes it."""
    approval = entry.get("require_approval") or "never"
    allowed = entry.get("allowed_tools")
    return McpServer(
        name=entry["name"],
        url=entry["url"],
        headers=entry.get("headers") or {},
        allowed_tools=None if allowed is None else tuple(allowed),
        require_approval=approval if isinstance(approval, str) else tuple(approval),
    )

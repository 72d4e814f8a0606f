"""An agent type's tools (API.md "Tools, steps and required actions"): the rules that span
items (unique names), and the MCP servers' headers, which are secrets.

Headers are stored encrypted (backend/core/secrets.py), decrypted only for the worker
(`mcp_servers_for_worker`), and every value leaves as "***" (schemas.McpServerOut). A client
may send back what it read: on an update, "***" for a header the same server already has
keeps the stored value.
"""

from __future__ import annotations

from typing import Any

import structlog
from cryptography.fernet import InvalidToken

from backend.agent_types.schemas import MASK, SEPARATOR, McpServer
from backend.core import secrets
from backend.core.errors import ValidationFailed

log = structlog.get_logger()

SECRETS_PURPOSE = "mcp-headers"


def check_names(tools: list[dict[str, Any]], servers: list[dict[str, Any]]) -> None:
    """Names unique within the type: client tools, servers, and the offered server tools
    (`<server>__<tool>`), which no client tool may shadow. 422 naming the item."""
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool["name"] in seen:
            _refuse(f"tools.{i}.name", f"tool '{tool['name']}' is declared twice")
        seen.add(tool["name"])
    names: set[str] = set()
    for i, server in enumerate(servers):
        if server["name"] in names:
            _refuse(f"mcp_servers.{i}.name", f"server '{server['name']}' is declared twice")
        names.add(server["name"])
    for i, tool in enumerate(tools):
        server, sep, _ = tool["name"].partition(SEPARATOR)
        if sep and server in names:
            _refuse(
                f"tools.{i}.name",
                f"tool '{tool['name']}' would collide with the tools of server '{server}'"
                f" (offered as {server}{SEPARATOR}<tool>)",
            )


def store_servers(
    servers: list[McpServer], stored: list[dict[str, Any]], secret_key: str
) -> list[dict[str, Any]]:
    """The rows to store: headers encrypted; "***" keeps what `stored` (the type's current
    servers) holds for the same server and header name, and is refused where nothing is."""
    previous = {
        server["name"]: {name.lower(): token for name, token in server["headers"].items()}
        for server in stored
    }
    rows = []
    for i, server in enumerate(servers):
        kept = previous.get(server.name, {})
        headers = {}
        for name, value in server.headers.items():
            if value != MASK:
                headers[name] = secrets.encrypt(value, secret_key, SECRETS_PURPOSE)
            elif name.lower() in kept:
                headers[name] = kept[name.lower()]
            else:
                _refuse(
                    f"mcp_servers.{i}.headers.{name}",
                    f"\"{MASK}\" keeps a stored value, but server '{server.name}' has no"
                    f" header {name} stored",
                )
        rows.append(server.model_dump(mode="json") | {"headers": headers})
    return rows


def mcp_servers_for_worker(stored: list[dict[str, Any]], secret_key: str) -> list[dict[str, Any]]:
    """An agent type's `mcp_servers` as the worker uses them: headers in plain text. A header
    that no longer decrypts (SECRET_KEY rotated) is left out and logged: the server then
    refuses the calls, which the model sees as error results, rather than the run failing."""
    return [server | {"headers": _plain(server, secret_key)} for server in stored]


def _plain(server: dict[str, Any], secret_key: str) -> dict[str, str]:
    headers = {}
    for name, token in server["headers"].items():
        try:
            headers[name] = secrets.decrypt(token, secret_key, SECRETS_PURPOSE)
        except InvalidToken:
            log.warning("mcp_header_unreadable", server=server["name"], header=name)
    return headers


def _refuse(field: str, message: str) -> None:
    raise ValidationFailed(f"{field}: {message}", field=field)

"""Endpoint URL rules: http(s) only, and no private, loopback or link-local address unless
WEBHOOK_ALLOW_PRIVATE_URLS (a webhook must not become a way into the operator's network)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from backend.core.errors import ValidationFailed

RESOLVE_TIMEOUT_SECONDS = 5.0


class UrlRefused(ValueError):
    pass


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_multicast
    )


async def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
    )
    return [str(info[4][0]) for info in infos]


def check_form(url: str) -> int:
    """Raise UrlRefused unless `url` is an http(s) URL with a host, a valid port and no
    credentials (also the rule for agent types' MCP servers); its port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise UrlRefused("must not carry credentials")
    try:
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("has an invalid port") from None


async def check(url: str, *, allow_private: bool, resolved: bool = True) -> None:
    """Raise UrlRefused unless `url` may receive webhooks (resolving its host); `resolved`:
    a host that does not resolve is refused too (at delivery), else let through (at create)."""
    await _checked(url, allow_private=allow_private, resolved=resolved)


async def resolve(url: str, *, allow_private: bool) -> str | None:
    """The address a delivery connects to: `url`'s host resolved and checked (raises
    UrlRefused), or None when private addresses are allowed (the connection resolves it)."""
    return await _checked(url, allow_private=allow_private, resolved=True)


async def _checked(url: str, *, allow_private: bool, resolved: bool) -> str | None:
    port = check_form(url)
    if allow_private:
        return None
    host = urlsplit(url).hostname or ""
    try:
        addresses = await _addresses(host, port)
    except (OSError, TimeoutError):
        if not resolved:
            return None  # not resolvable now: each delivery attempt checks it again
        raise UrlRefused(f"host {host} does not resolve") from None
    if not addresses or any(_private(address) for address in addresses):
        raise UrlRefused("resolves to a private, loopback or link-local address")
    return addresses[0]


async def validate(url: str, *, allow_private: bool) -> None:
    """`check` for a request body: 422 on the `url` field."""
    try:
        await check(url, allow_private=allow_private, resolved=False)
    except UrlRefused as exc:
        raise ValidationFailed(f"url {exc}", field="url") from None

"""LLM provider adapters behind one interface, and ``get_provider`` to pick one by name."""

from __future__ import annotations

from typing import Any

from backend.runs.providers.anthropic import AnthropicProvider
from backend.runs.providers.base import (
    Completion,
    CompletionRequest,
    Message,
    OnDelta,
    PermanentProviderError,
    Provider,
    ProviderError,
    ToolCall,
    ToolSpec,
    TransientProviderError,
    Usage,
)
from backend.runs.providers.fake import FakeProvider
from backend.runs.providers.openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "Completion",
    "CompletionRequest",
    "FakeProvider",
    "Message",
    "OnDelta",
    "OpenAIProvider",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "ToolCall",
    "ToolSpec",
    "TransientProviderError",
    "Usage",
    "get_provider",
]

_ADAPTERS: dict[str, type[AnthropicProvider] | type[OpenAIProvider]] = {
    "anthropic": AnthropicProvider,
    "openai": OpenAIProvider,
}
# One provider (and so one SDK client and its connection pool) per process and credentials.
_cache: dict[tuple[str, str | None, str | None], Provider] = {}


def get_provider(name: str, settings: Any) -> Provider:
    """The provider called ``name``, configured from ``settings`` (``<NAME>_API_KEY``/``_BASE_URL``).

    A missing key is not an error here: the provider raises ``not_configured`` when called.
    """
    if name == "fake":
        key: tuple[str, str | None, str | None] = (name, None, None)
    elif name in _ADAPTERS:
        prefix = name.upper()
        api_key = _secret(getattr(settings, f"{prefix}_API_KEY", None))
        key = (name, api_key, getattr(settings, f"{prefix}_BASE_URL", None) or None)
    else:
        raise PermanentProviderError("unknown_provider", f"unknown provider {name[:50]!r}")
    provider = _cache.get(key)
    if provider is None:
        provider = FakeProvider() if name == "fake" else _ADAPTERS[name](key[1], key[2])
        _cache[key] = provider
    return provider


def _secret(value: Any) -> str | None:
    """Plain text of a ``SecretStr`` (or str); None when unset or empty."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None

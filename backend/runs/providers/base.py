"""The provider interface: stream one completion, report its usage, classify errors.

Usage is normalized so that nothing is counted twice: ``input_tokens`` excludes
cache reads and writes (Anthropic's convention); OpenAI's ``prompt_tokens``,
which include cached tokens, are split by the OpenAI adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from backend.usage.tokens import Usage


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    system_prompt: str
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # 1-based attempt number of the run; the fake provider's fail_times reads it.
    attempt: int = 1


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    model: str


OnDelta = Callable[[str], Awaitable[None]]


class ProviderError(Exception):
    """A provider call failed. ``transient`` errors are retried, permanent ones are not.

    ``usage`` carries whatever the provider reported as consumed before failing.
    """

    transient: bool = False

    def __init__(self, code: str, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.usage = usage


class TransientProviderError(ProviderError):
    transient = True


class PermanentProviderError(ProviderError):
    transient = False


class Provider(Protocol):
    name: str

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        """Stream a completion, awaiting ``on_delta`` for each text piece; return the whole."""
        ...

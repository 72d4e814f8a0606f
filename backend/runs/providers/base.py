"""The provider interface: stream one completion, report its usage, classify errors.

One model step of a run is one completion. Its messages are the agent's history, the
run's input, then alternating assistant messages (text and/or tool calls) and tool
messages (one per call, in call order, right after the assistant message that asked).
Each adapter maps this common form to its SDK's wire format; tool calls come back in
the ``Completion`` (only text is streamed through ``on_delta``).

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
class ToolCall:
    id: str
    name: str  # the name the model was offered, e.g. "lookup" or "demo__add"
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]  # a JSON Schema object


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant" | "tool"
    # Assistant: may be "" when it only calls tools. Tool: the call's output.
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant only
    tool_call_id: str | None = None  # tool only
    is_error: bool = False  # tool only


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
    tools: tuple[ToolSpec, ...] = ()
    # 0-based index of this model step among the run's model steps; the fake's script reads it.
    step: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    model: str
    tool_calls: tuple[ToolCall, ...] = ()


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

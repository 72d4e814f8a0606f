"""The offline provider (API.md): deterministic answer, usage and failures, no network.

The answer is ``"echo: " + input``, streamed in ``chunks`` pieces whose concatenation
is exactly the answer; usage counts whitespace-separated words.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.runs.providers.base import (
    Completion,
    CompletionRequest,
    OnDelta,
    PermanentProviderError,
    TransientProviderError,
    Usage,
)

DEFAULT_CHUNKS = 4


@dataclass(frozen=True)
class FakeConfig:
    latency_ms: float = 0
    fail_times: int = 0
    fail_permanently: bool = False
    chunks: int = DEFAULT_CHUNKS

    @classmethod
    def parse(cls, config: object) -> FakeConfig:
        """Read the agent type's ``config``; unknown keys are ignored, ``null`` means default."""
        if not isinstance(config, Mapping):
            raise _invalid("config must be an object")
        return cls(
            latency_ms=_number(config, "latency_ms", cls.latency_ms),
            fail_times=_integer(config, "fail_times", cls.fail_times, minimum=0),
            fail_permanently=_boolean(config, "fail_permanently", cls.fail_permanently),
            chunks=_integer(config, "chunks", cls.chunks, minimum=1),
        )


class FakeProvider:
    name = "fake"

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        config = FakeConfig.parse(request.config)
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        if config.fail_permanently:
            raise PermanentProviderError(
                "simulated_permanent_error", "fake provider: simulated permanent failure"
            )
        if request.attempt <= config.fail_times:
            raise TransientProviderError(
                "simulated_transient_error",
                f"fake provider: simulated transient failure on attempt {request.attempt}"
                f" of {config.fail_times}",
            )
        run_input = last_user_input(request)
        answer = "echo: " + run_input
        for piece in split_evenly(answer, config.chunks):
            await on_delta(piece)
        input_tokens = len(request.system_prompt.split()) + len(run_input.split())
        output_tokens = len(answer.split())
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            raw={"input_tokens": input_tokens, "output_tokens": output_tokens},
        )
        return Completion(text=answer, usage=usage, model=request.model)


def last_user_input(request: CompletionRequest) -> str:
    """The run's input: the last user message (earlier ones are conversation history)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


def split_evenly(text: str, parts: int) -> list[str]:
    """``parts`` non-empty pieces (fewer if ``text`` is shorter) that join back to ``text``."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces: list[str] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _invalid(detail: str) -> PermanentProviderError:
    return PermanentProviderError("invalid_config", f"fake provider: {detail}")


def _integer(config: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = config.get(key)
    if value is None:
        return default
    # bool is an int subclass: `"fail_times": true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"{key} must be an integer ≥ {minimum}")
    return value


def _number(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _invalid(f"{key} must be a finite number ≥ 0")
    return float(value)


def _boolean(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false")
    return value

"""The offline provider (API.md): deterministic answer, usage and failures, no network.

Model step ``n`` of a run plays ``script[n]``: a text answer or tool calls (ids
``call_<step>_<i>``, unique within the run). Past the script, the answer is
``"echo: " + <the last message>``: the run's input or, after a tool step, the outputs of
that step's calls joined by "\n". Text is streamed in ``chunks`` pieces whose
concatenation is exactly the answer; usage counts whitespace-separated words (input:
system prompt + last message; output: the answer's words, or 10 per tool call).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.runs.providers.base import (
    Completion,
    CompletionRequest,
    OnDelta,
    PermanentProviderError,
    ToolCall,
    TransientProviderError,
    Usage,
)

DEFAULT_CHUNKS = 4
TOKENS_PER_TOOL_CALL = 10
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ScriptedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Turn:
    """One model step of the script: a text answer, or (when ``tool_calls``) tool calls."""

    text: str = ""
    tool_calls: tuple[ScriptedCall, ...] = ()


@dataclass(frozen=True)
class FakeConfig:
    latency_ms: float = 0
    fail_times: int = 0
    fail_permanently: bool = False
    chunks: int = DEFAULT_CHUNKS
    script: tuple[Turn, ...] = ()

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
            script=_script(config.get("script")),
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
        last = last_message(request)
        turn = config.script[request.step] if request.step < len(config.script) else None
        calls: tuple[ToolCall, ...] = ()
        if turn is not None and turn.tool_calls:
            answer = ""
            calls = tuple(
                ToolCall(id=f"call_{request.step}_{i}", name=c.name, arguments=c.arguments)
                for i, c in enumerate(turn.tool_calls)
            )
            output_tokens = TOKENS_PER_TOOL_CALL * len(calls)
        else:
            answer = turn.text if turn is not None else "echo: " + last
            output_tokens = len(answer.split())
        for piece in split_evenly(answer, config.chunks):
            await on_delta(piece)
        input_tokens = len(request.system_prompt.split()) + len(last.split())
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            raw={"input_tokens": input_tokens, "output_tokens": output_tokens},
        )
        return Completion(text=answer, usage=usage, model=request.model, tool_calls=calls)


def last_message(request: CompletionRequest) -> str:
    """After a tool step, its calls' outputs (the trailing tool messages) joined by "\n";
    otherwise the run's input, the last user message (earlier ones are history)."""
    outputs: list[str] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        outputs.append(message.content)
    if outputs:
        return "\n".join(reversed(outputs))
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


def split_evenly(text: str, parts: int) -> list[str]:
    """``parts`` non-empty pieces (fewer if ``text`` is shorter, none if it is empty) that
    join back to ``text``."""
    if not text:
        return []
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


def _script(value: object) -> tuple[Turn, ...]:
    """``script``: a list of turns, each exactly one of ``text`` or ``tool_calls``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("script must be a list of turns")
    return tuple(_turn(turn, f"script[{i}]") for i, turn in enumerate(value))


def _turn(turn: object, where: str) -> Turn:
    if not isinstance(turn, Mapping):
        raise _invalid(f"{where} must be an object with exactly one of text or tool_calls")
    if unknown := sorted(map(str, set(turn) - {"text", "tool_calls"})):
        raise _invalid(f"{where} has unknown keys {unknown} (a turn is text or tool_calls)")
    if len(turn) != 1:
        raise _invalid(f"{where} must have exactly one of text or tool_calls")
    if "text" in turn:
        if not isinstance(turn["text"], str):
            raise _invalid(f"{where}.text must be a string")
        return Turn(text=turn["text"])
    calls = turn["tool_calls"]
    if not isinstance(calls, list) or not calls:
        raise _invalid(f"{where}.tool_calls must be a non-empty list")
    return Turn(
        tool_calls=tuple(_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls))
    )


def _call(call: object, where: str) -> ScriptedCall:
    if not isinstance(call, Mapping):
        raise _invalid(f"{where} must be an object with name and arguments")
    if unknown := sorted(map(str, set(call) - {"name", "arguments"})):
        raise _invalid(f"{where} has unknown keys {unknown} (only name and arguments)")
    name = call.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise _invalid(f"{where}.name must be a tool name matching ^[A-Za-z0-9_-]{{1,64}}$")
    arguments = call.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise _invalid(f"{where}.arguments must be an object")
    return ScriptedCall(name=name, arguments=dict(arguments))

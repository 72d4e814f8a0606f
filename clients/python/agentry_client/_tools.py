"""Calling a caller's tool function for one tool call (sync or async functions)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from agentry_client._core import ToolError, tool_result


def _failure(call: dict[str, Any], exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ToolError):
        return tool_result(call, exc.output, True)
    return tool_result(call, f"{exc.__class__.__name__}: {exc}", True)


def call_tool(call: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """`fn(arguments)`; its answer is the output, an exception an `is_error` output."""
    try:
        return tool_result(call, fn(call.get("arguments") or {}), False)
    except Exception as exc:  # noqa: BLE001 - the model is told, the run goes on
        return _failure(call, exc)


async def acall_tool(call: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        output = fn(call.get("arguments") or {})
        if inspect.isawaitable(output):
            output = await output
        return tool_result(call, output, False)
    except Exception as exc:  # noqa: BLE001
        return _failure(call, exc)

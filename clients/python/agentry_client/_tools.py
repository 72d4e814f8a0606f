"""Calling a caller's tool function for one tool call (sync or async functions), and what to
send instead of an output the server refuses."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from agentry_client import errors
from agentry_client._core import ToolError, tool_result

log = logging.getLogger("agentry_client")
_OUTPUT_FIELD = re.compile(r"tool_outputs\.(\d+)\.output")
REFUSED = "the tool's output was refused by the Agentry server: "


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


def without_refused(
    outputs: list[dict[str, Any]], error: errors.AgentryError
) -> list[dict[str, Any]] | None:
    """The outputs to send again after the server refused one it cannot take (422 on
    `tool_outputs.N.output`: too long, or a NUL character; 413: the body too large, blamed on
    the longest output): that one becomes an error result saying why, so that the model is
    told and the run goes on instead of waiting until its action expires. None when `error`
    is anything else (or names an output already replaced): the caller raises it."""
    if isinstance(error, errors.ValidationError) and (
        match := _OUTPUT_FIELD.fullmatch(error.field or "")
    ):
        index = int(match.group(1))
    elif isinstance(error, errors.PayloadTooLarge) and outputs:
        index = max(range(len(outputs)), key=lambda i: len(outputs[i]["output"]))
    else:
        return None
    if index >= len(outputs) or outputs[index]["output"].startswith(REFUSED):
        return None
    refused = outputs[index]
    log.warning(
        "tool call %s: the server refused its output of %d characters (%s); sent as an error",
        refused["tool_call_id"],
        len(refused["output"]),
        error.message,
    )
    kept = list(outputs)
    kept[index] = {**refused, "output": REFUSED + error.message, "is_error": True}
    return kept

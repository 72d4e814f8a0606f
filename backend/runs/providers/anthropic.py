"""Anthropic Messages API adapter, streamed.

Usage arrives in two parts: ``message_start`` carries the input and cache counts,
``message_delta`` the cumulative output (and, when present, updated input/cache)
counts; later non-null values win. Anthropic's ``input_tokens`` already excludes
cache reads and writes, which is our convention.

Tools: offered as ``tools=[{name, description, input_schema}]``. An assistant message
with tool calls becomes ``text`` (when not empty) and ``tool_use`` blocks; consecutive
tool messages become ONE user message of ``tool_result`` blocks (with ``is_error``).
A streamed ``tool_use`` block's input arrives as ``input_json_delta`` fragments; it is
parsed once the stream has ended, so that an invalid one (``invalid_tool_arguments``,
transient) still carries the step's whole usage.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2

from backend.runs.providers._common import (
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    incomplete_stream,
    not_configured,
    status_error,
    tool_call,
    transport_error,
)
from backend.runs.providers.base import (
    Completion,
    CompletionRequest,
    Message,
    OnDelta,
    ProviderError,
    TransientProviderError,
    Usage,
)

DEFAULT_MAX_TOKENS = 1024
# Options from the agent type's `config` worth forwarding; anything else is ignored.
_CONFIG_KWARGS = ("stop_sequences", "metadata", "service_tier")
# anthropic>=1 removed sampling kwargs from its method signatures; the API still accepts
# them for models that use them, so they travel in `extra_body`, and only when set.
_CONFIG_SAMPLING = ("top_p", "top_k")
# Error types seen inside a 200 stream (`event: error`), where there is no useful status.
_STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 408,
    "invalid_request_error": 400,
}
_LABEL = "Anthropic"


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._api_key = api_key or None
        self._base_url = base_url
        self._timeout = timeout
        self._client: anthropic.AsyncAnthropic | None = None

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._api_key is None:
            raise not_configured(_LABEL, "ANTHROPIC_API_KEY")
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=anthropic.Timeout(
                    self._timeout, connect=min(self._timeout, CONNECT_TIMEOUT_SECONDS)
                ),
                max_retries=0,  # the worker retries, with backoff and a per-run budget
            )
        return self._client

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        client = self._get_client()
        state = _StreamState()
        try:
            stream = await client.messages.create(**build_params(request), stream=True)
            async with stream:
                async for event in stream:
                    if text := state.feed(event):
                        await on_delta(text)
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise self._classify(exc, state.usage()) from exc
        usage = state.usage()
        if not state.finished:
            raise incomplete_stream(_LABEL, usage)
        calls = tuple(
            tool_call(_LABEL, block["id"], block["name"], block_input(block), usage)
            for block in state.tool_blocks.values()
        )
        return Completion(
            text="".join(state.text),
            usage=usage or Usage(),
            model=state.model or request.model,
            tool_calls=calls,
        )

    def _classify(self, exc: Exception, usage: Usage | None) -> ProviderError:
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            if status < 400:  # an `event: error` inside a 200 stream
                status = _STREAM_ERROR_STATUS.get(str(exc.type), 500)
            if exc.type == "overloaded_error":
                status = 529
            return status_error(_LABEL, status, exc.api_message, secret=self._api_key, usage=usage)
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            timeout = isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException)
            return transport_error(_LABEL, timeout=timeout, usage=usage)
        # Unparseable or unexpected response data: a server-side glitch, worth a retry.
        return TransientProviderError(
            "invalid_response", f"{_LABEL} sent a response that could not be read", usage=usage
        )


def build_params(request: CompletionRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": wire_messages(request.messages),
    }
    if request.system_prompt:
        params["system"] = request.system_prompt
    if request.tools:
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in request.tools
        ]
    extra_body: dict[str, Any] = {}
    if request.temperature is not None:
        extra_body["temperature"] = request.temperature
    config = request.config if isinstance(request.config, dict) else {}
    extra_body.update({key: config[key] for key in _CONFIG_SAMPLING if key in config})
    params.update({key: config[key] for key in _CONFIG_KWARGS if key in config})
    if extra_body:
        params["extra_body"] = extra_body
    return params


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []  # tool results waiting to be sent as one user message
    for m in messages:
        if m.role == "tool":
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id,
                    "content": m.content,
                    "is_error": m.is_error,
                }
            )
            continue
        if results:
            wire.append({"role": "user", "content": results})
            results = []
        if m.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            wire.append({"role": m.role, "content": blocks})
        else:
            wire.append({"role": m.role, "content": m.content})
    if results:
        wire.append({"role": "user", "content": results})
    return wire


def block_input(block: dict[str, Any]) -> str:
    """A tool_use block's input as JSON: its streamed fragments, else the input it started with."""
    return "".join(block["json"]) if block["json"] else json.dumps(block["input"] or {})


class _StreamState:
    """Accumulates the raw stream events: text, tool_use blocks, merged usage, model,
    whether it finished."""

    def __init__(self) -> None:
        self.text: list[str] = []
        # By block index, in stream order: id, name and the input's JSON fragments.
        self.tool_blocks: dict[int, dict[str, Any]] = {}
        self.raw_usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.finished = False

    def feed(self, event: Any) -> str | None:
        if event.type == "message_start":
            self.model = event.message.model
            self._merge_usage(event.message.usage)
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            self.tool_blocks[event.index] = {
                "id": block.id,
                "name": block.name,
                "input": block.input,
                "json": [],
            }
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            self.text.append(event.delta.text)
            return str(event.delta.text)
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            if (tool_block := self.tool_blocks.get(event.index)) is not None:
                tool_block["json"].append(event.delta.partial_json)
        elif event.type == "message_delta":
            self._merge_usage(event.usage)
        elif event.type == "message_stop":
            self.finished = True
        return None

    def _merge_usage(self, usage: Any) -> None:
        if usage is None:
            return
        update = usage.model_dump(mode="json", exclude_none=True)
        self.raw_usage = {**(self.raw_usage or {}), **update}

    def usage(self) -> Usage | None:
        """What the provider reported so far; None before ``message_start``."""
        if self.raw_usage is None:
            return None
        raw = self.raw_usage
        return Usage(
            input_tokens=int(raw.get("input_tokens") or 0),
            output_tokens=int(raw.get("output_tokens") or 0),
            cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(raw.get("cache_creation_input_tokens") or 0),
            raw=dict(raw),
        )

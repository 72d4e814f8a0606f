"""OpenAI Chat Completions adapter, streamed.

Usage arrives only in the last chunk (``stream_options.include_usage``), after the
one carrying ``finish_reason``. OpenAI's ``prompt_tokens`` include cached tokens
(and any reported cache writes); they are split out so that nothing counts twice.

Tools: offered as ``function`` tools. An assistant message with tool calls carries
``tool_calls`` (arguments as a JSON string; ``content`` null when it has no text); a
tool message is ``{"role": "tool", "tool_call_id", "content"}``. Chat Completions has
no error flag for a tool result, so an error result's content is sent prefixed with
``"error: "``. Streamed tool calls arrive by ``index``: id and name first, then the
arguments in fragments; they are parsed once the stream has ended (so that invalid
arguments, ``invalid_tool_arguments``, transient, still carry the step's usage).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

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
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Usage,
)

# Options from the agent type's `config` worth forwarding; anything else is ignored.
_CONFIG_KWARGS = (
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "reasoning_effort",
    "service_tier",
    "safety_identifier",
)
# Billing exhausted: answered as 429, but retrying cannot help.
_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached"}
_LABEL = "OpenAI"


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._api_key = api_key or None
        self._base_url = base_url
        self._timeout = timeout
        self._client: openai.AsyncOpenAI | None = None

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._api_key is None:
            raise not_configured(_LABEL, "OPENAI_API_KEY")
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=openai.Timeout(
                    self._timeout, connect=min(self._timeout, CONNECT_TIMEOUT_SECONDS)
                ),
                max_retries=0,  # the worker retries, with backoff and a per-run budget
            )
        return self._client

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        client = self._get_client()
        state = _StreamState()
        try:
            stream = await client.chat.completions.create(**build_params(request))
            async with stream:
                async for chunk in stream:
                    if text := state.feed(chunk):
                        await on_delta(text)
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self._classify(exc, state.usage) from exc
        if state.finish_reason is None:
            raise incomplete_stream(_LABEL, state.usage)
        calls = tuple(
            tool_call(_LABEL, call["id"], call["name"], "".join(call["arguments"]), state.usage)
            for _, call in sorted(state.tool_calls.items())
        )
        return Completion(
            text="".join(state.text),
            usage=state.usage or Usage(),
            model=state.model or request.model,
            tool_calls=calls,
        )

    def _classify(self, exc: Exception, usage: Usage | None) -> ProviderError:
        body = getattr(exc, "body", None)
        detail = body.get("message") if isinstance(body, dict) else None
        code = getattr(exc, "code", None)
        if code in _QUOTA_CODES:
            return PermanentProviderError(
                "quota_exceeded", f"{_LABEL} quota or billing limit exhausted", usage=usage
            )
        if isinstance(exc, openai.APIStatusError):
            return status_error(_LABEL, exc.status_code, detail, secret=self._api_key, usage=usage)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            timeout = isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException)
            return transport_error(_LABEL, timeout=timeout, usage=usage)
        if isinstance(exc, openai.APIError) and body is not None:
            # An error object inside a 200 stream: no status, classify by its type.
            invalid = getattr(exc, "type", None) == "invalid_request_error"
            status = 400 if invalid else 429 if code == "rate_limit_exceeded" else 500
            return status_error(_LABEL, status, detail, secret=self._api_key, usage=usage)
        return TransientProviderError(
            "invalid_response", f"{_LABEL} sent a response that could not be read", usage=usage
        )


def build_params(request: CompletionRequest) -> dict[str, Any]:
    messages = (
        [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    )
    messages += [wire_message(m) for m in request.messages]
    params: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.input_schema,
                },
            }
            for t in request.tools
        ]
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        # `max_tokens` is deprecated and rejected by reasoning models; this one works everywhere.
        params["max_completion_tokens"] = request.max_tokens
    config = request.config if isinstance(request.config, dict) else {}
    params.update({key: config[key] for key in _CONFIG_KWARGS if key in config})
    return params


def wire_message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        content = f"error: {m.content}" if m.is_error else m.content
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": content}
    if m.tool_calls:
        return {
            "role": m.role,
            "content": m.content or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in m.tool_calls
            ],
        }
    return {"role": m.role, "content": m.content}


class _StreamState:
    """Accumulates chunks: text of choice 0, its tool calls, its finish reason, the model,
    the final usage."""

    def __init__(self) -> None:
        self.text: list[str] = []
        # By the call's index: its id, name and argument fragments.
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: Any) -> str | None:
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = normalize_usage(chunk.usage.model_dump(mode="json", exclude_none=True))
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            if choice.delta is None:
                continue
            for delta in choice.delta.tool_calls or ():
                call = self.tool_calls.setdefault(
                    delta.index, {"id": None, "name": None, "arguments": []}
                )
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] = delta.function.name or call["name"]
                    if delta.function.arguments:
                        call["arguments"].append(delta.function.arguments)
            if choice.delta.content:
                self.text.append(choice.delta.content)
                return str(choice.delta.content)
        return None


def normalize_usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    cache_read = int(details.get("cached_tokens") or 0)
    cache_write = int(details.get("cache_write_tokens") or 0)
    prompt = int(raw.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=max(prompt - cache_read - cache_write, 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        raw=raw,
    )

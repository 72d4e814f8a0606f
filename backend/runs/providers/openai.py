"""OpenAI Chat Completions adapter, streamed.

Usage arrives only in the last chunk (``stream_options.include_usage``), after the
one carrying ``finish_reason``. OpenAI's ``prompt_tokens`` include cached tokens
(and any reported cache writes); they are split out so that nothing counts twice.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from backend.runs.providers._common import (
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    incomplete_stream,
    not_configured,
    status_error,
    transport_error,
)
from backend.runs.providers.base import (
    Completion,
    CompletionRequest,
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
        return Completion(
            text="".join(state.text),
            usage=state.usage or Usage(),
            model=state.model or request.model,
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
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    params: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        # `max_tokens` is deprecated and rejected by reasoning models; this one works everywhere.
        params["max_completion_tokens"] = request.max_tokens
    config = request.config if isinstance(request.config, dict) else {}
    params.update({key: config[key] for key in _CONFIG_KWARGS if key in config})
    return params


class _StreamState:
    """Accumulates chunks: text of choice 0, its finish reason, the model, the final usage."""

    def __init__(self) -> None:
        self.text: list[str] = []
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
            if choice.delta is not None and choice.delta.content:
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

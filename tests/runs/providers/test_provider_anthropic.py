"""The real anthropic SDK against respx mocks of the Messages API's SSE wire format."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from backend.runs.providers import (
    AnthropicProvider,
    CompletionRequest,
    Message,
    PermanentProviderError,
    ProviderError,
    ToolCall,
    ToolSpec,
    TransientProviderError,
    Usage,
)

ANTHROPIC_URL = "http://anthropic.test"  # the `anthropic_api` fixture mocks this host
API_KEY = "sk-ant-api03-secret-KEY-0123456789"
MODEL = "claude-test-model"
SERVED_MODEL = "claude-test-model-20260101"
START_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 40,
    "cache_read_input_tokens": 1000,
    "output_tokens": 1,
}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def message_start(usage: dict[str, Any] | None = None) -> str:
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": SERVED_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage or START_USAGE,
    }
    return sse("message_start", {"type": "message_start", "message": message})


def text_block(*texts: str) -> str:
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in texts
    ]
    stop = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    return (
        sse("content_block_start", start) + sse("ping", {"type": "ping"}) + "".join(deltas) + stop
    )


def message_end(usage: dict[str, Any] | None = None) -> str:
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": usage or {"output_tokens": 12},
    }
    return sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})


def stream_response(body: str) -> httpx.Response:
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_1",
    }


class Deltas:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, text: str) -> None:
        self.pieces.append(text)


def request(**kwargs: Any) -> CompletionRequest:
    defaults: dict[str, Any] = {
        "model": MODEL,
        "system_prompt": "You are terse.",
        "messages": [
            Message("user", "Hi"),
            Message("assistant", "Hello."),
            Message("user", "Say hello world"),
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }
    return CompletionRequest(**{**defaults, **kwargs})


@pytest.fixture
def provider() -> AnthropicProvider:
    return AnthropicProvider(API_KEY, ANTHROPIC_URL, timeout=5)


async def test_streams_deltas_and_normalizes_usage(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    body = message_start() + text_block("Hello", ", ", "world") + message_end()
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(), deltas)

    assert deltas.pieces == ["Hello", ", ", "world"]
    assert completion.text == "Hello, world"
    assert completion.model == SERVED_MODEL
    assert completion.usage == Usage(
        input_tokens=25,
        output_tokens=12,
        cache_read_tokens=1000,
        cache_write_tokens=40,
        raw={**START_USAGE, "output_tokens": 12},
    )


async def test_message_delta_usage_overrides_message_start(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    final = {"input_tokens": 30, "cache_read_input_tokens": 900, "output_tokens": 7}
    body = message_start() + text_block("ok") + message_end(final)
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))

    completion = await provider.complete(request(), Deltas())

    assert (completion.usage.input_tokens, completion.usage.cache_read_tokens) == (30, 900)
    assert (completion.usage.output_tokens, completion.usage.cache_write_tokens) == (7, 40)


async def test_request_carries_prompt_and_options(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    route = anthropic_api.post("/v1/messages").mock(
        return_value=stream_response(message_start() + text_block("ok") + message_end())
    )
    config = {
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "latency_ms": 10,
        "unknown_option": True,
    }

    await provider.complete(request(config=config), Deltas())

    sent = route.calls.last.request
    assert (
        sent.headers["authorization"] == f"Bearer {API_KEY}"
    )  # anthropic>=2 no longer sends x-api-key
    assert json.loads(sent.content) == {
        "model": MODEL,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Say hello world"},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "stream": True,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


async def test_defaults_max_tokens_and_omits_unset_options(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    route = anthropic_api.post("/v1/messages").mock(
        return_value=stream_response(message_start() + text_block("ok") + message_end())
    )

    await provider.complete(request(system_prompt="", temperature=None, max_tokens=None), Deltas())

    sent = json.loads(route.calls.last.request.content)
    assert sent["max_tokens"] == 1024
    assert "temperature" not in sent
    assert "system" not in sent


@pytest.mark.parametrize(
    ("status", "error_type", "expected", "code"),
    [
        (429, "rate_limit_error", TransientProviderError, "rate_limited"),
        (500, "api_error", TransientProviderError, "server_error"),
        (529, "overloaded_error", TransientProviderError, "overloaded"),
        (408, "timeout_error", TransientProviderError, "timeout"),
        (400, "invalid_request_error", PermanentProviderError, "bad_request"),
        (401, "authentication_error", PermanentProviderError, "authentication_error"),
        (403, "permission_error", PermanentProviderError, "permission_denied"),
        (404, "not_found_error", PermanentProviderError, "not_found"),
    ],
)
async def test_http_errors_are_classified_without_leaking_the_key(
    anthropic_api: respx.Router,
    provider: AnthropicProvider,
    status: int,
    error_type: str,
    expected: type[ProviderError],
    code: str,
) -> None:
    # Worst case: the body quotes the key back; it must still not reach the run's error.
    body = error_body(error_type, f"problem with key {API_KEY}")
    route = anthropic_api.post("/v1/messages").mock(return_value=httpx.Response(status, json=body))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert type(caught.value) is expected
    assert caught.value.code == code
    assert str(status) in caught.value.message
    assert API_KEY not in caught.value.message
    assert API_KEY not in str(caught.value)
    assert route.call_count == 1  # the SDK does not retry; the worker does


@pytest.mark.parametrize(
    ("side_effect", "code"),
    [(httpx.ConnectError, "connection_error"), (httpx.ReadTimeout, "timeout")],
)
async def test_transport_failures_are_transient(
    anthropic_api: respx.Router,
    provider: AnthropicProvider,
    side_effect: type[Exception],
    code: str,
) -> None:
    route = anthropic_api.post("/v1/messages").mock(side_effect=side_effect)

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == code
    assert caught.value.usage is None
    assert route.call_count == 1


async def test_error_event_mid_stream_is_classified_and_keeps_reported_usage(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    error_event = sse("error", error_body("overloaded_error", "Overloaded"))
    body = message_start() + text_block("Hel") + error_event
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))
    deltas = Deltas()

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), deltas)

    assert caught.value.code == "overloaded"
    assert deltas.pieces == ["Hel"]
    assert caught.value.usage is not None
    assert caught.value.usage.input_tokens == 25
    assert caught.value.usage.cache_read_tokens == 1000


async def test_stream_cut_off_before_message_stop_is_transient(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    anthropic_api.post("/v1/messages").mock(
        return_value=stream_response(message_start() + text_block("Hel"))
    )

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == "incomplete_stream"
    assert caught.value.usage is not None
    assert caught.value.usage.input_tokens == 25


async def test_connection_lost_mid_body_is_transient_with_usage(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield (message_start() + text_block("Hel")).encode()
        raise httpx.ReadError("connection reset")

    anthropic_api.post("/v1/messages").mock(
        return_value=httpx.Response(
            200, content=body(), headers={"content-type": "text/event-stream"}
        )
    )

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == "connection_error"
    assert caught.value.usage is not None
    assert caught.value.usage.input_tokens == 25


@pytest.mark.parametrize("api_key", [None, ""])
async def test_missing_key_is_not_configured_at_call_time(api_key: str | None) -> None:
    provider = AnthropicProvider(api_key, ANTHROPIC_URL)  # constructing it is fine

    with respx.mock(using="httpx2") as router, pytest.raises(PermanentProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == "not_configured"
    assert router.calls.call_count == 0


# --- tools -------------------------------------------------------------------------------

LOOKUP = ToolSpec(
    "lookup",
    "Look a word up",
    {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
)
ADD = ToolSpec("demo__add", "Add two numbers", {"type": "object", "properties": {}})


def tool_use_block(index: int, call_id: str, name: str, *fragments: str) -> str:
    start = {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
    }
    deltas = [
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            },
        )
        for fragment in fragments
    ]
    stop = sse("content_block_stop", {"type": "content_block_stop", "index": index})
    return sse("content_block_start", start) + "".join(deltas) + stop


def tool_use_end(output_tokens: int = 40) -> str:
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    return sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})


async def test_request_carries_tools_tool_calls_and_grouped_tool_results(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    route = anthropic_api.post("/v1/messages").mock(
        return_value=stream_response(message_start() + text_block("ok") + message_end())
    )
    messages = [
        Message("user", "Define cat, then add 2 and 3"),
        Message(
            "assistant",
            "Let me look.",
            tool_calls=(
                ToolCall("toolu_1", "lookup", {"word": "cat"}),
                ToolCall("toolu_2", "demo__add", {"a": 2, "b": 3}),
            ),
        ),
        Message("tool", "a small feline", tool_call_id="toolu_1"),
        Message("tool", "server unreachable", tool_call_id="toolu_2", is_error=True),
        Message("assistant", "", tool_calls=(ToolCall("toolu_3", "demo__add", {}),)),
        Message("tool", "5", tool_call_id="toolu_3"),
    ]

    await provider.complete(request(messages=messages, tools=(LOOKUP, ADD)), Deltas())

    sent = json.loads(route.calls.last.request.content)
    assert sent["tools"] == [
        {"name": "lookup", "description": "Look a word up", "input_schema": LOOKUP.input_schema},
        {"name": "demo__add", "description": "Add two numbers", "input_schema": ADD.input_schema},
    ]
    assert sent["messages"] == [
        {"role": "user", "content": "Define cat, then add 2 and 3"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "cat"}},
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "demo__add",
                    "input": {"a": 2, "b": 3},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "a small feline",
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "server unreachable",
                    "is_error": True,
                },
            ],
        },
        {
            "role": "assistant",  # no text: no empty text block
            "content": [{"type": "tool_use", "id": "toolu_3", "name": "demo__add", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_3", "content": "5", "is_error": False}
            ],
        },
    ]


async def test_no_tools_offered_sends_no_tools_key(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    route = anthropic_api.post("/v1/messages").mock(
        return_value=stream_response(message_start() + text_block("ok") + message_end())
    )

    await provider.complete(request(), Deltas())

    assert "tools" not in json.loads(route.calls.last.request.content)


async def test_streamed_tool_call_is_parsed_from_input_json_fragments(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    body = (
        message_start()
        + text_block("Looking ", "it up.")
        + tool_use_block(1, "toolu_01A", "lookup", "", '{"wo', 'rd": "c', 'at", "n": [1, 2]}')
        + tool_use_end(output_tokens=55)
    )
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(tools=(LOOKUP,)), deltas)

    assert deltas.pieces == ["Looking ", "it up."]  # only text is streamed
    assert completion.text == "Looking it up."
    assert completion.tool_calls == (ToolCall("toolu_01A", "lookup", {"word": "cat", "n": [1, 2]}),)
    assert completion.usage == Usage(
        input_tokens=25,
        output_tokens=55,
        cache_read_tokens=1000,
        cache_write_tokens=40,
        raw={**START_USAGE, "output_tokens": 55},
    )


async def test_tool_call_only_answer_with_two_calls_and_no_arguments(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    body = (
        message_start()
        + tool_use_block(0, "toolu_1", "demo__add", '{"a": 2,', ' "b": 3}')
        + tool_use_block(1, "toolu_2", "lookup", "")  # a tool without arguments
        + tool_use_end()
    )
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(tools=(LOOKUP, ADD)), deltas)

    assert deltas.pieces == []
    assert completion.text == ""
    assert completion.tool_calls == (
        ToolCall("toolu_1", "demo__add", {"a": 2, "b": 3}),
        ToolCall("toolu_2", "lookup", {}),
    )


@pytest.mark.parametrize("fragments", [('{"word": "ca',), ("[1, 2]",), ('"cat"',)])
async def test_arguments_not_a_json_object_are_transient_and_keep_usage(
    anthropic_api: respx.Router, provider: AnthropicProvider, fragments: tuple[str, ...]
) -> None:
    body = message_start() + tool_use_block(0, "toolu_1", "lookup", *fragments) + tool_use_end(33)
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(tools=(LOOKUP,)), Deltas())

    assert caught.value.code == "invalid_tool_arguments"
    assert "lookup" in caught.value.message
    assert caught.value.usage is not None
    assert (caught.value.usage.input_tokens, caught.value.usage.output_tokens) == (25, 33)


async def test_tool_use_input_given_whole_at_block_start_is_kept(
    anthropic_api: respx.Router, provider: AnthropicProvider
) -> None:
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"w": 1}},
    }
    stop = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    body = message_start() + sse("content_block_start", start) + stop + tool_use_end()
    anthropic_api.post("/v1/messages").mock(return_value=stream_response(body))

    completion = await provider.complete(request(tools=(LOOKUP,)), Deltas())

    assert completion.tool_calls == (ToolCall("toolu_1", "lookup", {"w": 1}),)

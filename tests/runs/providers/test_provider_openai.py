"""The real openai SDK against respx mocks of Chat Completions' streamed wire format."""

import json
from typing import Any

import httpx
import pytest
import respx

from backend.runs.providers import (
    CompletionRequest,
    Message,
    OpenAIProvider,
    PermanentProviderError,
    ProviderError,
    ToolCall,
    ToolSpec,
    TransientProviderError,
    Usage,
)

OPENAI_URL = "http://openai.test/v1"  # the `openai_api` fixture mocks this base URL
API_KEY = "sk-proj-secret-KEY-0123456789"
MODEL = "gpt-test-mini"
SERVED_MODEL = "gpt-test-mini-2026-01-01"
USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 9,
    "total_tokens": 1209,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, usage: Any = None) -> str:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    data = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": SERVED_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": usage,
    }
    return f"data: {json.dumps(data)}\n\n"


def answer(*texts: str) -> str:
    first = chunk({"role": "assistant", "content": "", "refusal": None})
    return first + "".join(chunk({"content": t}) for t in texts)


def finish(usage: dict[str, Any] | None = None) -> str:
    return chunk({}, "stop") + chunk(None, usage=usage or USAGE) + "data: [DONE]\n\n"


def stream_response(body: str) -> httpx.Response:
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


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
def provider() -> OpenAIProvider:
    return OpenAIProvider(API_KEY, OPENAI_URL, timeout=5)


async def test_streams_deltas_and_splits_cached_tokens_out_of_prompt_tokens(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    body = answer("Hello", ", ", "world") + finish()
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(), deltas)

    assert deltas.pieces == ["Hello", ", ", "world"]
    assert completion.text == "Hello, world"
    assert completion.model == SERVED_MODEL
    assert completion.usage == Usage(
        input_tokens=1200 - 1024,
        output_tokens=9,
        cache_read_tokens=1024,
        cache_write_tokens=0,
        raw=USAGE,
    )
    assert completion.usage.total_tokens == USAGE["total_tokens"]


async def test_reported_cache_writes_are_split_out_too(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    usage = {
        "prompt_tokens": 500,
        "completion_tokens": 3,
        "total_tokens": 503,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 300},
    }
    openai_api.post("/chat/completions").mock(
        return_value=stream_response(answer("ok") + finish(usage))
    )

    completion = await provider.complete(request(), Deltas())

    assert completion.usage.input_tokens == 100
    assert completion.usage.cache_read_tokens == 100
    assert completion.usage.cache_write_tokens == 300
    assert completion.usage.total_tokens == 503


async def test_request_carries_prompt_and_options(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    route = openai_api.post("/chat/completions").mock(
        return_value=stream_response(answer("ok") + finish())
    )
    config = {"top_p": 0.9, "stop": ["END"], "seed": 7, "latency_ms": 10, "unknown_option": 1}

    await provider.complete(request(config=config), Deltas())

    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(sent.content) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Say hello world"},
        ],
        "temperature": 0.2,
        "max_completion_tokens": 256,
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
    }


async def test_omits_unset_options(openai_api: respx.Router, provider: OpenAIProvider) -> None:
    route = openai_api.post("/chat/completions").mock(
        return_value=stream_response(answer("ok") + finish())
    )

    await provider.complete(request(system_prompt="", temperature=None, max_tokens=None), Deltas())

    sent = json.loads(route.calls.last.request.content)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert not {"temperature", "max_tokens", "max_completion_tokens"} & sent.keys()


@pytest.mark.parametrize(
    ("status", "error_type", "error_code", "expected", "code"),
    [
        (429, "requests", "rate_limit_exceeded", TransientProviderError, "rate_limited"),
        (429, "insufficient_quota", "insufficient_quota", PermanentProviderError, "quota_exceeded"),
        (500, "server_error", None, TransientProviderError, "server_error"),
        (503, "server_error", None, TransientProviderError, "server_error"),
        (400, "invalid_request_error", None, PermanentProviderError, "bad_request"),
        (
            401,
            "invalid_request_error",
            "invalid_api_key",
            PermanentProviderError,
            "authentication_error",
        ),
        (404, "invalid_request_error", "model_not_found", PermanentProviderError, "not_found"),
    ],
)
async def test_http_errors_are_classified_without_leaking_the_key(
    openai_api: respx.Router,
    provider: OpenAIProvider,
    status: int,
    error_type: str,
    error_code: str | None,
    expected: type[ProviderError],
    code: str,
) -> None:
    # OpenAI's 401 really does quote the (masked) key; here it quotes it whole.
    body = error_body(f"Incorrect API key provided: {API_KEY}.", error_type, error_code)
    route = openai_api.post("/chat/completions").mock(
        return_value=httpx.Response(status, json=body)
    )

    with pytest.raises(ProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert type(caught.value) is expected
    assert caught.value.code == code
    assert API_KEY not in caught.value.message
    assert API_KEY not in str(caught.value)
    assert route.call_count == 1  # the SDK does not retry; the worker does


@pytest.mark.parametrize(
    ("side_effect", "code"),
    [(httpx.ConnectError, "connection_error"), (httpx.ConnectTimeout, "timeout")],
)
async def test_transport_failures_are_transient(
    openai_api: respx.Router,
    provider: OpenAIProvider,
    side_effect: type[Exception],
    code: str,
) -> None:
    route = openai_api.post("/chat/completions").mock(side_effect=side_effect)

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == code
    assert route.call_count == 1


async def test_error_object_mid_stream_is_transient(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    error = error_body(
        "The server had an error while processing your request.", "server_error", None
    )
    body = answer("Hel") + f"data: {json.dumps(error)}\n\n"
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))
    deltas = Deltas()

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), deltas)

    assert caught.value.code == "server_error"
    assert deltas.pieces == ["Hel"]


async def test_stream_cut_off_before_finish_reason_is_transient(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    openai_api.post("/chat/completions").mock(return_value=stream_response(answer("Hel")))

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(), Deltas())

    assert caught.value.code == "incomplete_stream"


@pytest.mark.parametrize("api_key", [None, ""])
async def test_missing_key_is_not_configured_at_call_time(api_key: str | None) -> None:
    provider = OpenAIProvider(api_key, OPENAI_URL)  # constructing it is fine

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


def tool_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, args: str = ""
) -> str:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def tool_finish(usage: dict[str, Any] | None = None) -> str:
    return chunk({}, "tool_calls") + chunk(None, usage=usage or USAGE) + "data: [DONE]\n\n"


async def test_request_carries_function_tools_tool_calls_and_tool_results(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    route = openai_api.post("/chat/completions").mock(
        return_value=stream_response(answer("ok") + finish())
    )
    messages = [
        Message("user", "Define cat, then add 2 and 3"),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_1", "lookup", {"word": "cat"}),
                ToolCall("call_2", "demo__add", {"a": 2, "b": 3}),
            ),
        ),
        Message("tool", "a small feline", tool_call_id="call_1"),
        Message("tool", "denied: not today", tool_call_id="call_2", is_error=True),
        Message("assistant", "Nearly.", tool_calls=(ToolCall("call_3", "demo__add", {}),)),
        Message("tool", "5", tool_call_id="call_3"),
    ]

    await provider.complete(request(messages=messages, tools=(LOOKUP, ADD)), Deltas())

    sent = json.loads(route.calls.last.request.content)
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up",
                "parameters": LOOKUP.input_schema,
            },
        },
        {
            "type": "function",
            "function": {
                "name": "demo__add",
                "description": "Add two numbers",
                "parameters": ADD.input_schema,
            },
        },
    ]
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Define cat, then add 2 and 3"},
        {
            "role": "assistant",
            "content": None,  # tool calls only
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"word": "cat"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "demo__add", "arguments": '{"a": 2, "b": 3}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a small feline"},
        # No error flag in Chat Completions: the content says it.
        {"role": "tool", "tool_call_id": "call_2", "content": "error: denied: not today"},
        {
            "role": "assistant",
            "content": "Nearly.",
            "tool_calls": [
                {
                    "id": "call_3",
                    "type": "function",
                    "function": {"name": "demo__add", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": "5"},
    ]


async def test_no_tools_offered_sends_no_tools_key(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    route = openai_api.post("/chat/completions").mock(
        return_value=stream_response(answer("ok") + finish())
    )

    await provider.complete(request(), Deltas())

    assert "tools" not in json.loads(route.calls.last.request.content)


async def test_two_parallel_streamed_tool_calls_are_assembled_by_index(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    body = (
        chunk({"role": "assistant", "content": None, "refusal": None})
        + tool_delta(0, call_id="call_A", name="lookup")
        + tool_delta(0, args='{"wo')
        + tool_delta(0, args='rd": "c')
        + tool_delta(1, call_id="call_B", name="demo__add", args='{"a"')
        + tool_delta(0, args='at"}')  # fragments of both calls interleave
        + tool_delta(1, args=": 2, ")
        + tool_delta(1, args='"b": 3}')
        + tool_finish()
    )
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(tools=(LOOKUP, ADD)), deltas)

    assert deltas.pieces == []  # only text is streamed
    assert completion.text == ""
    assert completion.tool_calls == (
        ToolCall("call_A", "lookup", {"word": "cat"}),
        ToolCall("call_B", "demo__add", {"a": 2, "b": 3}),
    )
    assert completion.usage.input_tokens == 1200 - 1024
    assert completion.usage.output_tokens == 9


async def test_text_then_a_tool_call_without_arguments(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    body = (
        answer("Let me ", "check.") + tool_delta(0, call_id="call_A", name="lookup") + tool_finish()
    )
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))
    deltas = Deltas()

    completion = await provider.complete(request(tools=(LOOKUP,)), deltas)

    assert deltas.pieces == ["Let me ", "check."]
    assert completion.text == "Let me check."
    assert completion.tool_calls == (ToolCall("call_A", "lookup", {}),)


@pytest.mark.parametrize("arguments", ['{"word": "ca', "[1, 2]", "null"])
async def test_arguments_not_a_json_object_are_transient_and_keep_usage(
    openai_api: respx.Router, provider: OpenAIProvider, arguments: str
) -> None:
    body = tool_delta(0, call_id="call_A", name="lookup", args=arguments) + tool_finish()
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(tools=(LOOKUP,)), Deltas())

    assert caught.value.code == "invalid_tool_arguments"
    assert "lookup" in caught.value.message
    assert caught.value.usage is not None
    assert caught.value.usage.output_tokens == 9


async def test_tool_call_without_id_or_name_is_an_invalid_response(
    openai_api: respx.Router, provider: OpenAIProvider
) -> None:
    body = tool_delta(0, args='{"word": "cat"}') + tool_finish()
    openai_api.post("/chat/completions").mock(return_value=stream_response(body))

    with pytest.raises(TransientProviderError) as caught:
        await provider.complete(request(tools=(LOOKUP,)), Deltas())

    assert caught.value.code == "invalid_response"
    assert caught.value.usage is not None

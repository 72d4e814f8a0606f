import time
from typing import Any

import pytest

from backend.runs.providers import (
    CompletionRequest,
    FakeProvider,
    Message,
    PermanentProviderError,
    ToolCall,
    TransientProviderError,
    Usage,
)
from backend.runs.providers.fake import FakeConfig


class Deltas:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.first_at: float | None = None

    async def __call__(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.pieces.append(text)


def request(config: dict[str, Any] | None = None, *, attempt: int = 1, **kwargs: Any):
    defaults: dict[str, Any] = {
        "model": "fake-1",
        "system_prompt": "You are a helpful bot",
        "messages": [Message("user", "hello big world")],
    }
    return CompletionRequest(**{**defaults, **kwargs}, config=config or {}, attempt=attempt)


async def test_answers_echo_with_exact_word_usage() -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(request(), deltas)

    assert completion.text == "echo: hello big world"
    assert completion.model == "fake-1"
    assert completion.usage == Usage(
        input_tokens=5 + 3,  # system prompt words + input words
        output_tokens=4,
        cache_read_tokens=0,
        cache_write_tokens=0,
        raw={"input_tokens": 8, "output_tokens": 4},
    )


async def test_input_is_last_user_message_and_history_is_not_counted() -> None:
    history = [
        Message("user", "an earlier question with many words"),
        Message("assistant", "echo: an earlier question with many words"),
        Message("user", "  spaced\tout\ninput  "),
    ]

    completion = await FakeProvider().complete(request(messages=history), Deltas())

    assert completion.text == "echo:   spaced\tout\ninput  "
    assert completion.usage.input_tokens == 5 + 3
    assert completion.usage.output_tokens == 4


async def test_streams_four_chunks_by_default() -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(request(), deltas)

    assert len(deltas.pieces) == 4
    assert "".join(deltas.pieces) == completion.text
    assert all(deltas.pieces)


@pytest.mark.parametrize("chunks", [1, 2, 7, 21])
async def test_streams_configured_number_of_chunks(chunks: int) -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(request({"chunks": chunks}), deltas)

    assert len(completion.text) == 21
    assert len(deltas.pieces) == chunks
    assert "".join(deltas.pieces) == completion.text


async def test_more_chunks_than_characters_streams_one_character_each() -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(
        request({"chunks": 1000}, messages=[Message("user", "hi")]), deltas
    )

    assert deltas.pieces == list("echo: hi")
    assert completion.text == "echo: hi"


@pytest.mark.parametrize("attempt", [1, 2])
async def test_fail_times_raises_transient_on_first_attempts(attempt: int) -> None:
    deltas = Deltas()

    with pytest.raises(TransientProviderError) as caught:
        await FakeProvider().complete(request({"fail_times": 2}, attempt=attempt), deltas)

    assert caught.value.code == "simulated_transient_error"
    assert caught.value.transient is True
    assert deltas.pieces == []


async def test_fail_times_succeeds_after_the_failing_attempts() -> None:
    completion = await FakeProvider().complete(request({"fail_times": 2}, attempt=3), Deltas())

    assert completion.text == "echo: hello big world"


@pytest.mark.parametrize("attempt", [1, 5])
async def test_fail_permanently_always_raises_permanent(attempt: int) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await FakeProvider().complete(
            request({"fail_permanently": True}, attempt=attempt), Deltas()
        )

    assert caught.value.code == "simulated_permanent_error"
    assert caught.value.transient is False


async def test_latency_sleeps_before_the_first_delta() -> None:
    deltas = Deltas()
    started = time.monotonic()

    await FakeProvider().complete(request({"latency_ms": 50}), deltas)

    assert deltas.first_at is not None
    assert deltas.first_at - started >= 0.045


async def test_null_and_unknown_config_keys_mean_defaults() -> None:
    deltas = Deltas()
    config = {"chunks": None, "latency_ms": None, "fail_times": None, "top_k": 3}

    completion = await FakeProvider().complete(request(config), deltas)

    assert len(deltas.pieces) == 4
    assert completion.text == "echo: hello big world"


@pytest.mark.parametrize(
    "config",
    [
        {"chunks": 0},
        {"chunks": "3"},
        {"chunks": True},
        {"chunks": 2.5},
        {"fail_times": -1},
        {"fail_times": 1.5},
        {"fail_times": False},
        {"latency_ms": "10"},
        {"latency_ms": -5},
        {"latency_ms": float("nan")},
        {"latency_ms": float("inf")},
        {"latency_ms": True},
        {"fail_permanently": "yes"},
        {"fail_permanently": 1},
    ],
)
async def test_bad_config_is_a_permanent_invalid_config_error(config: dict[str, Any]) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await FakeProvider().complete(request(config), Deltas())

    assert caught.value.code == "invalid_config"


async def test_non_object_config_is_invalid() -> None:
    bad = CompletionRequest(
        model="fake-1",
        system_prompt="",
        messages=[Message("user", "x")],
        config=[1],  # type: ignore[arg-type]
    )

    with pytest.raises(PermanentProviderError) as caught:
        await FakeProvider().complete(bad, Deltas())

    assert caught.value.code == "invalid_config"


# --- script ------------------------------------------------------------------------------

SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "demo__add", "arguments": {"a": 2, "b": 3}}, {"name": "lookup"}]},
    {"text": "all done now"},
]


def after_tool_step(*outputs: str) -> list[Message]:
    """The run's messages once step 0's calls have their results."""
    calls = tuple(ToolCall(f"call_0_{i}", "lookup", {}) for i in range(len(outputs)))
    return [
        Message("user", "hello big world"),
        Message("assistant", "", tool_calls=calls),
        *(Message("tool", out, tool_call_id=c.id) for out, c in zip(outputs, calls, strict=True)),
    ]


async def test_script_tool_call_turn_gives_ids_and_ten_tokens_per_call() -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(request({"script": SCRIPT}), deltas)

    assert completion.tool_calls == (
        ToolCall("call_0_0", "demo__add", {"a": 2, "b": 3}),
        ToolCall("call_0_1", "lookup", {}),  # arguments default to {}
    )
    assert completion.text == ""
    assert deltas.pieces == []
    assert completion.usage == Usage(
        input_tokens=5 + 3,
        output_tokens=2 * 10,
        raw={"input_tokens": 8, "output_tokens": 20},
    )


async def test_script_ids_are_unique_within_the_run() -> None:
    script = [{"tool_calls": [{"name": "lookup"}]}, {"tool_calls": [{"name": "lookup"}]}]
    provider = FakeProvider()

    first = await provider.complete(request({"script": script}), Deltas())
    second = await provider.complete(
        request({"script": script}, messages=after_tool_step("x"), step=1), Deltas()
    )

    assert [c.id for c in first.tool_calls + second.tool_calls] == ["call_0_0", "call_1_0"]


async def test_script_text_turn_is_streamed_and_counts_the_tool_outputs_as_input() -> None:
    deltas = Deltas()
    config = {"script": SCRIPT, "chunks": 2}

    completion = await FakeProvider().complete(
        request(config, messages=after_tool_step("5", "a small cat"), step=1), deltas
    )

    assert completion.text == "all done now"
    assert completion.tool_calls == ()
    assert deltas.pieces == ["all do", "ne now"]
    assert completion.usage.input_tokens == 5 + 1 + 3  # system prompt + both tool outputs
    assert completion.usage.output_tokens == 3


async def test_script_used_up_echoes_the_tool_outputs_joined_in_call_order() -> None:
    script = SCRIPT[:1]

    completion = await FakeProvider().complete(
        request({"script": script}, messages=after_tool_step("5", "a small cat"), step=1),
        Deltas(),
    )

    assert completion.text == "echo: 5\na small cat"
    assert completion.tool_calls == ()
    assert completion.usage.input_tokens == 5 + 4
    assert completion.usage.output_tokens == 5


async def test_script_used_up_without_tool_step_echoes_the_input() -> None:
    completion = await FakeProvider().complete(
        request({"script": [{"text": "first"}]}, step=1), Deltas()
    )

    assert completion.text == "echo: hello big world"
    assert completion.usage.output_tokens == 4


async def test_every_run_starts_at_the_first_turn_and_history_tool_results_are_not_input() -> None:
    history = [*after_tool_step("earlier output"), Message("assistant", "echo: earlier output")]
    messages = [*history, Message("user", "next question")]

    completion = await FakeProvider().complete(
        request({"script": SCRIPT}, messages=messages, step=0), Deltas()
    )

    assert [c.id for c in completion.tool_calls] == ["call_0_0", "call_0_1"]
    assert completion.usage.input_tokens == 5 + 2


async def test_empty_text_turn_streams_nothing() -> None:
    deltas = Deltas()

    completion = await FakeProvider().complete(request({"script": [{"text": ""}]}), deltas)

    assert completion.text == ""
    assert deltas.pieces == []
    assert completion.usage.output_tokens == 0


async def test_fail_times_still_applies_to_a_scripted_step() -> None:
    with pytest.raises(TransientProviderError):
        await FakeProvider().complete(request({"script": SCRIPT, "fail_times": 1}), Deltas())


def test_a_valid_script_parses() -> None:
    config = FakeConfig.parse(
        {"script": [*SCRIPT, {"tool_calls": [{"name": "a", "arguments": None}]}]}
    )

    assert len(config.script) == 3
    assert FakeConfig.parse({"script": None}).script == ()
    assert FakeConfig.parse({"script": []}).script == ()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"text": "hi"}, "script must be a list of turns"),
        (["hi"], "script[0] must be an object with exactly one of text or tool_calls"),
        ([{"text": "a"}, {}], "script[1] must have exactly one of text or tool_calls"),
        (
            [{"text": "a", "tool_calls": [{"name": "x"}]}],
            "script[0] must have exactly one of text or tool_calls",
        ),
        ([{"txt": "a"}], "script[0] has unknown keys ['txt']"),
        ([{"text": 5}], "script[0].text must be a string"),
        ([{"text": "a"}, {"tool_calls": []}], "script[1].tool_calls must be a non-empty list"),
        ([{"tool_calls": {"name": "x"}}], "script[0].tool_calls must be a non-empty list"),
        ([{"tool_calls": ["x"]}], "script[0].tool_calls[0] must be an object"),
        (
            [{"tool_calls": [{"name": "ok"}, {"name": "bad name"}]}],
            "script[0].tool_calls[1].name must be a tool name matching ^[A-Za-z0-9_-]{1,64}$",
        ),
        ([{"tool_calls": [{"name": "x" * 65}]}], "script[0].tool_calls[0].name"),
        ([{"tool_calls": [{"arguments": {}}]}], "script[0].tool_calls[0].name"),
        (
            [{"tool_calls": [{"name": "x", "arguments": [1]}]}],
            "script[0].tool_calls[0].arguments must be an object",
        ),
        (
            [{"tool_calls": [{"name": "x", "id": "mine"}]}],
            "script[0].tool_calls[0] has unknown keys ['id']",
        ),
    ],
)
def test_invalid_scripts_are_rejected_naming_the_turn(script: Any, message: str) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        FakeConfig.parse({"script": script})

    assert caught.value.code == "invalid_config"
    assert caught.value.message.startswith("fake provider: ")
    assert message in caught.value.message

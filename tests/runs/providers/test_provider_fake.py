import time
from typing import Any

import pytest

from backend.runs.providers import (
    CompletionRequest,
    FakeProvider,
    Message,
    PermanentProviderError,
    TransientProviderError,
    Usage,
)


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

"""Pricing of provider calls: override, bundled genai-prices table, unknown and fake models.

Every per-MTok price hard-coded below was read from the table bundled with genai-prices 0.2.3
(genai_prices/data.py); ``test_prices_version_is_the_one_these_prices_were_read_from`` fails
when the pin moves, so that they are checked again.
"""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import httpx
import httpx2
import pytest
from genai_prices import data_snapshot
from genai_prices.update_prices import UpdatePrices

from backend.usage import pricing
from backend.usage.pricing import PRICES_VERSION, Price, price_call, to_money
from backend.usage.tokens import Usage

M = Decimal(1_000_000)
VERSION = "0.2.3"

# anthropic claude-sonnet-4-0 (matches "claude-sonnet-4-20250514") and claude-3-5-sonnet:
# $3 input, $15 output, $0.30 cache read, $3.75 cache write (5 min), $6 cache write (1 h).
SONNET = {"in": Decimal("3"), "out": Decimal("15"), "cr": Decimal("0.3"), "cw": Decimal("3.75")}
SONNET_CW_1H = Decimal("6")
# anthropic claude-sonnet-4-5: the same base prices, and when a request's input (cache tokens
# included) exceeds 200,000 tokens every token costs $6 in, $22.50 out, $0.60 read, $7.50 write.
SONNET_45_LONG = {
    "in": Decimal("6"),
    "out": Decimal("22.5"),
    "cr": Decimal("0.6"),
    "cw": Decimal("7.5"),
}
# openai gpt-4o: $2.50 input, $10 output, $1.25 cached input.
GPT_4O = {"in": Decimal("2.5"), "out": Decimal("10"), "cr": Decimal("1.25")}
# openai gpt-4o-2024-05-13: $5 input, $15 output, no cached-input price.
GPT_4O_0513 = {"in": Decimal("5"), "out": Decimal("15")}
# openai o3: $10 in / $40 out / $0.50 cached until 2025-06-09, $2 / $8 / $0.50 from 2025-06-10.
O3_OLD = {"in": Decimal("10"), "out": Decimal("40"), "cr": Decimal("0.5")}
O3_NEW = {"in": Decimal("2"), "out": Decimal("8"), "cr": Decimal("0.5")}


def by_hand(usage: Usage, p: dict[str, Decimal]) -> Decimal:
    """Cost from per-MTok prices; our input_tokens excludes cache tokens."""
    return (
        usage.input_tokens * p["in"]
        + usage.cache_read_tokens * p.get("cr", p["in"])
        + usage.cache_write_tokens * p.get("cw", p["in"])
        + usage.output_tokens * p["out"]
    ) / M


def table_source(provider_model: str) -> str:
    return f"genai-prices:{VERSION}:{provider_model}"


def test_prices_version_is_the_one_these_prices_were_read_from() -> None:
    assert PRICES_VERSION == VERSION == genai_prices.__version__


# --- override -----------------------------------------------------------------------------


def test_override_prices_every_kind_of_token_exactly() -> None:
    usage = Usage(input_tokens=1234, output_tokens=567, cache_read_tokens=89, cache_write_tokens=10)
    override = {
        "input_per_mtok_usd": "3.1",
        "output_per_mtok_usd": 15.7,  # float: read via str, so exactly 15.7
        "cache_read_per_mtok_usd": Decimal("0.31"),
        "cache_write_per_mtok_usd": 4,
    }
    price = price_call("anthropic", "claude-sonnet-4-20250514", usage, override=override)
    expected = (1234 * Decimal("3.1") + 89 * Decimal("0.31") + 10 * 4 + 567 * Decimal("15.7")) / M
    assert price == Price(cost_usd=expected, source="override", unknown=False)
    assert expected == Decimal("0.01279489")


def test_override_without_cache_rates_prices_cache_tokens_at_the_input_rate() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=100, cache_read_tokens=500, cache_write_tokens=200
    )
    override = {"input_per_mtok_usd": "2", "output_per_mtok_usd": "8"}
    price = price_call("openai", "gpt-4o", usage, override=override)
    assert price.cost_usd == ((1000 + 500 + 200) * 2 + 100 * 8) / M


@pytest.mark.parametrize(("provider", "model"), [("fake", "echo"), ("openai", "my-finetune-x")])
def test_override_wins_for_free_and_unknown_models(provider: str, model: str) -> None:
    usage = Usage(input_tokens=10, output_tokens=20)
    price = price_call(
        provider,
        model,
        usage,
        override={"input_per_mtok_usd": 1, "output_per_mtok_usd": 2},
    )
    assert price == Price(cost_usd=Decimal(50) / M, source="override", unknown=False)


@pytest.mark.parametrize(
    "override",
    [
        {"input_per_mtok_usd": "3"},
        {"output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": "-1", "output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": "NaN", "output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": "Infinity", "output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": "three", "output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": True, "output_per_mtok_usd": "3"},
        {"input_per_mtok_usd": "3", "output_per_mtok_usd": "3", "cache_read_per_mtok_usd": -2},
    ],
)
def test_invalid_override_is_refused(override: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="pricing override"):
        price_call("openai", "gpt-4o", Usage(input_tokens=1), override=override)


# --- bundled table: anthropic ---------------------------------------------------------------


def test_anthropic_model_without_cache_tokens() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    price = price_call("anthropic", "claude-sonnet-4-20250514", usage)
    assert price == Price(
        cost_usd=(1000 * SONNET["in"] + 500 * SONNET["out"]) / M,
        source=table_source("anthropic/claude-sonnet-4-0"),
        unknown=False,
    )


def test_anthropic_cache_tokens_are_not_inside_input_tokens() -> None:
    # Anthropic convention: input_tokens (2,000) excludes the 10,000 read and 3,000 written.
    usage = Usage(
        input_tokens=2000, output_tokens=800, cache_read_tokens=10_000, cache_write_tokens=3000
    )
    price = price_call("anthropic", "claude-3-5-sonnet-20241022", usage)
    expected = (
        2000 * SONNET["in"] + 10_000 * SONNET["cr"] + 3000 * SONNET["cw"] + 800 * SONNET["out"]
    ) / M
    assert price.cost_usd == expected == Decimal("0.03225")
    assert price.source == table_source("anthropic/claude-3-5-sonnet")
    assert price.unknown is False


def test_anthropic_one_hour_cache_writes_from_raw_usage_cost_the_1h_rate() -> None:
    raw = {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 0,
        "output_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
    }
    usage = Usage(input_tokens=1000, output_tokens=500, cache_write_tokens=3000, raw=raw)
    price = price_call("anthropic", "claude-sonnet-4-20250514", usage)
    assert (
        price.cost_usd
        == (1000 * SONNET["in"] + 2000 * SONNET["cw"] + 1000 * SONNET_CW_1H + 500 * SONNET["out"])
        / M
    )


def test_long_context_tier_counts_cache_tokens_in_the_input() -> None:
    # claude-sonnet-4-5: the tier starts above 200,000 input tokens, cache tokens included.
    # 150,000 uncached + 40,000 read = 190,000: base prices.
    below = Usage(input_tokens=150_000, output_tokens=1000, cache_read_tokens=40_000)
    assert price_call("anthropic", "claude-sonnet-4-5", below).cost_usd == by_hand(below, SONNET)

    # 150,000 uncached + 60,000 read = 210,000: every token at the long-context prices,
    # although the uncached input alone is below the threshold.
    above = Usage(input_tokens=150_000, output_tokens=1000, cache_read_tokens=60_000)
    price = price_call("anthropic", "claude-sonnet-4-5-20250929", above)
    assert price.cost_usd == by_hand(above, SONNET_45_LONG) == Decimal("0.9585")
    assert price.source == table_source("anthropic/claude-sonnet-4-5")


def test_tiers_and_prices_follow_the_call_time() -> None:
    # claude-sonnet-4-6 had the 200k tier until 2026-03-12 (same tier prices as sonnet 4.5);
    # from 2026-03-13 it has flat base prices.
    usage = Usage(input_tokens=250_000, output_tokens=1000)
    before = price_call(
        "anthropic", "claude-sonnet-4-6", usage, at=datetime(2026, 3, 1, tzinfo=UTC)
    )
    after = price_call(
        "anthropic", "claude-sonnet-4-6", usage, at=datetime(2026, 3, 20, tzinfo=UTC)
    )
    assert before.cost_usd == by_hand(usage, SONNET_45_LONG)
    assert after.cost_usd == by_hand(usage, SONNET)

    # openai o3 was cut from $10/$40 to $2/$8 on 2025-06-10; a naive datetime is UTC.
    usage = Usage(input_tokens=4000, output_tokens=2000, cache_read_tokens=1000)
    old = price_call("openai", "o3", usage, at=datetime(2025, 6, 9, 23, 59))
    new = price_call("openai", "o3", usage, at=datetime(2025, 6, 10, 0, 1, tzinfo=UTC))
    assert old.cost_usd == by_hand(usage, O3_OLD)
    assert new.cost_usd == by_hand(usage, O3_NEW)


# --- bundled table: openai ------------------------------------------------------------------


def test_openai_cached_prompt_tokens_priced_at_the_cached_rate() -> None:
    # OpenAI reports prompt_tokens=5,000 of which cached_tokens=3,000; our adapter normalizes to
    # input_tokens = 5,000 - 3,000 and cache_read_tokens = 3,000.
    prompt, cached, completion = 5000, 3000, 400
    usage = Usage(input_tokens=prompt - cached, output_tokens=completion, cache_read_tokens=cached)
    price = price_call("openai", "gpt-4o-2024-08-06", usage)
    expected = (
        (prompt - cached) * GPT_4O["in"] + cached * GPT_4O["cr"] + completion * GPT_4O["out"]
    ) / M
    assert price == Price(cost_usd=expected, source=table_source("openai/gpt-4o"), unknown=False)
    assert expected == Decimal("0.01275")


def test_openai_model_without_a_cached_price_charges_cached_tokens_as_input() -> None:
    usage = Usage(input_tokens=2000, output_tokens=400, cache_read_tokens=3000)
    price = price_call("openai", "gpt-4o-2024-05-13", usage)
    assert price.cost_usd == ((2000 + 3000) * GPT_4O_0513["in"] + 400 * GPT_4O_0513["out"]) / M


# --- unknown, fake, precision ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-imaginary-9"),
        ("openai", "my-finetune-x"),
        ("anthropic", "gpt-4o"),  # a model of another provider is not guessed
        ("mistral", "mistral-large"),  # not one of our providers
    ],
)
def test_unknown_model_has_no_cost_never_zero(provider: str, model: str) -> None:
    for usage in (Usage(input_tokens=1000, output_tokens=10), Usage()):
        price = price_call(provider, model, usage)
        assert price == Price(cost_usd=None, source=f"unknown:{provider}/{model}", unknown=True)


def test_source_stays_short_for_absurd_model_names() -> None:
    price = price_call("openai", "x" * 5000, Usage(input_tokens=1))
    assert price.unknown is True
    assert price.source.startswith("unknown:openai/xxx")
    assert len(price.source) < 200


def test_fake_provider_is_free_and_known() -> None:
    price = price_call("fake", "echo", Usage(input_tokens=12, output_tokens=7))
    assert price == Price(cost_usd=Decimal(0), source="fake:free", unknown=False)


def test_cost_keeps_full_precision_and_to_money_rounds_half_even() -> None:
    # claude-3-haiku: $0.25 input. One token costs $0.00000025, below a millionth.
    price = price_call("anthropic", "claude-3-haiku-20240307", Usage(input_tokens=1))
    assert price.cost_usd == Decimal("0.00000025")
    assert to_money(price.cost_usd) == Decimal("0.000000")
    assert to_money(Decimal("0.0000125")) == Decimal("0.000012")
    assert to_money(Decimal("0.0000135")) == Decimal("0.000014")
    assert to_money(Decimal("1.23456789")) == Decimal("1.234568")


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="cache_read_tokens"):
        price_call("openai", "gpt-4o", Usage(input_tokens=1, cache_read_tokens=-1))


# --- never the network ----------------------------------------------------------------------


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("pricing touched the network")


@pytest.fixture
def cold_cache() -> None:
    """Forget the loaded table and the model lookups, as in a fresh worker."""
    pricing._bundled.cache_clear()
    pricing._lookup.cache_clear()


@pytest.mark.usefixtures("cold_cache")
def test_pricing_from_a_cold_cache_never_touches_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in (httpx, httpx2):
        monkeypatch.setattr(module, "get", _no_network)
        monkeypatch.setattr(module.Client, "send", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)

    usage = Usage(input_tokens=2000, output_tokens=400, cache_read_tokens=3000)
    assert price_call("openai", "gpt-4o", usage).cost_usd == by_hand(usage, GPT_4O)
    assert price_call("anthropic", "claude-3-5-sonnet-latest", usage).cost_usd == by_hand(
        usage, SONNET
    )
    assert not any(t.name == "genai_prices:update" for t in threading.enumerate())


def test_network_updater_cannot_be_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpx2, "get", _no_network)
    with pytest.raises(RuntimeError, match="disabled"):
        UpdatePrices().start()
    with pytest.raises(RuntimeError, match="disabled"), UpdatePrices():
        pass
    with pytest.raises(RuntimeError, match="disabled"):
        UpdatePrices().fetch()
    assert genai_prices.wait_prices_updated_sync(timeout=0) is False  # no updater running


@pytest.mark.usefixtures("cold_cache")
def test_downloaded_prices_would_not_replace_the_bundled_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the updater does after a download: install a global snapshot. Ours ignores it.
    downloaded = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", downloaded)
    with pytest.raises(LookupError):
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o", provider_id="openai")

    usage = Usage(input_tokens=1000, output_tokens=100)
    price = price_call("openai", "gpt-4o", usage)
    assert price.cost_usd == by_hand(usage, GPT_4O)
    assert price.source == table_source("openai/gpt-4o")

"""Price one provider call from its normalized usage.

Where a price comes from, in order:

1. the agent type's ``pricing`` override (any provider, any model);
2. ``fake`` provider: free (cost 0, a known price);
3. ``anthropic`` / ``openai``: the price table bundled with the pinned genai-prices package,
   at the time of the call (historic prices, tiers, cache reads/writes handled by the library);
4. anything else: unknown, cost ``None``. A model we cannot price is never priced as 0.

Token conventions. Our ``Usage.input_tokens`` excludes cache reads and writes (Anthropic's
convention). genai-prices counts cache tokens as sub-units of ``input_tokens`` (it prices
``input - cache_read - cache_write`` at the input rate), and picks long-context tiers from that
total, so we add the cache tokens back before asking it.

Override prices: ``input_per_mtok_usd`` and ``output_per_mtok_usd`` are required; cache reads and
writes are priced at ``cache_read_per_mtok_usd`` / ``cache_write_per_mtok_usd`` when given, else
at the input rate (no discount assumed, so an override never under-charges).

Precision: the cost is an exact Decimal, never rounded here. Per-MTok prices in the bundled
anthropic/openai tables have at most 4 decimals, so a cost has at most 10 fractional digits and
fits the NUMERIC(20,10) column exactly; only an override with more than 4 decimals can exceed
it (the column then rounds). ``to_money`` rounds to 0.000001 USD for display only.

Network: genai-prices can replace its prices with a download (``UpdatePrices``, a background
thread fetching JSON from GitHub and installing it with ``set_custom_snapshot``); that is its only
network code. We never use it: prices are read from our own snapshot of the bundled
``genai_prices.data`` module, which no custom snapshot can replace, and importing this module
disables ``UpdatePrices`` process-wide so nobody can start it by mistake.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from importlib.metadata import version
from typing import Any, NoReturn

import structlog
from genai_prices import types as gp_types
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.update_prices import UpdatePrices

from backend.usage.tokens import Usage

__all__ = ["PRICES_VERSION", "Price", "price_call", "to_money"]

log = structlog.get_logger()

PRICES_VERSION: str = version("genai-prices")

_MTOK = Decimal(1_000_000)
_MONEY = Decimal("0.000001")
_SOURCE_MAX = 199
# Our provider name -> genai-prices provider id. Looked up by id, never guessed from the model
# name, so e.g. "gpt-4o" under provider "anthropic" is unknown rather than priced as OpenAI.
_TABLE_PROVIDERS = {"anthropic": "anthropic", "openai": "openai"}
# Wide precision and Inexact trapped: every cost is exact or the call fails loudly, whatever
# decimal context the calling worker happens to run in.
_EXACT = Context(
    prec=60,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal | None
    source: str
    unknown: bool


def price_call(
    provider: str,
    model: str,
    usage: Usage,
    *,
    override: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> Price:
    """Price one provider call. ``at`` (default now; naive means UTC) selects historic prices.

    Raises ValueError for negative token counts or an invalid override.
    """
    _check_usage(usage)
    if override is not None:
        return _price_override(usage, override)
    if provider == "fake":
        return Price(cost_usd=Decimal(0), source="fake:free", unknown=False)

    table_provider = _TABLE_PROVIDERS.get(provider)
    found = _lookup(table_provider, model) if table_provider is not None else None
    if found is None:
        return _unknown(f"unknown:{provider}/{model}")
    gp_provider, gp_model = found
    source = _cut(f"genai-prices:{PRICES_VERSION}:{gp_provider.id}/{gp_model.id}")

    when = datetime.now(UTC) if at is None else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        with localcontext(_EXACT):
            calc = gp_model.calc_price(
                _table_usage(provider, usage), gp_provider, genai_request_timestamp=when
            )
    except (ValueError, ArithmeticError):
        # A table entry the library cannot apply must not fail the run: flag it, never guess.
        log.warning("price_calc_failed", source=source, exc_info=True)
        return _unknown(f"unpriceable:{source}")
    return Price(cost_usd=calc.total_price, source=source, unknown=False)


def to_money(d: Decimal) -> Decimal:
    """Round a cost to a millionth of a dollar, banker's rounding. For display, not storage."""
    return d.quantize(_MONEY, rounding=ROUND_HALF_EVEN)


def _check_usage(usage: Usage) -> None:
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage.{name} must be a non-negative int, got {value!r}")


def _price_override(usage: Usage, override: Mapping[str, Any]) -> Price:
    input_rate = _rate(override, "input_per_mtok_usd")
    output_rate = _rate(override, "output_per_mtok_usd")
    cache_read_rate = _rate(override, "cache_read_per_mtok_usd", default=input_rate)
    cache_write_rate = _rate(override, "cache_write_per_mtok_usd", default=input_rate)
    with localcontext(_EXACT):
        cost = (
            usage.input_tokens * input_rate
            + usage.cache_read_tokens * cache_read_rate
            + usage.cache_write_tokens * cache_write_rate
            + usage.output_tokens * output_rate
        ) / _MTOK
    return Price(cost_usd=cost, source="override", unknown=False)


def _rate(override: Mapping[str, Any], key: str, default: Decimal | None = None) -> Decimal:
    raw = override.get(key)
    if raw is None:
        if default is None:
            raise ValueError(f"pricing override needs {key}")
        return default
    if isinstance(raw, bool):
        raise ValueError(f"pricing override {key} must be a number, got {raw!r}")
    try:
        # Via str: a float 0.1 becomes Decimal("0.1"), not its binary expansion.
        rate = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"pricing override {key} must be a number, got {raw!r}") from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"pricing override {key} must be a finite number >= 0, got {raw!r}")
    return rate


@functools.cache
def _bundled() -> DataSnapshot:
    # Our own snapshot of the bundled data: unaffected by genai_prices' global custom snapshot,
    # which is what its network updater replaces. Deferred: importing the table takes ~0.2 s.
    from genai_prices.data import providers

    return DataSnapshot(providers=providers, from_auto_update=False)


@functools.lru_cache(maxsize=1024)
def _lookup(provider_id: str, model: str) -> tuple[gp_types.Provider, gp_types.ModelInfo] | None:
    # Cached, misses included: matching a name scans every model's match rules.
    try:
        return _bundled().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None


def _table_usage(provider: str, usage: Usage) -> gp_types.Usage:
    values: dict[str, int] = {
        # genai-prices' input_tokens includes the cache tokens (see module docstring).
        "input_tokens": usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
    }
    if provider == "anthropic":
        one_hour = _anthropic_1h_cache_writes(usage)
        if one_hour:
            values["cache_write_1h_tokens"] = one_hour
    return gp_types.Usage(**values)


def _anthropic_1h_cache_writes(usage: Usage) -> int:
    """1-hour cache writes cost more than 5-minute ones; Anthropic reports them only in raw
    ``usage.cache_creation.ephemeral_1h_input_tokens``. Ignored unless consistent."""
    breakdown = usage.raw.get("cache_creation")
    if not isinstance(breakdown, Mapping):
        return 0
    one_hour = breakdown.get("ephemeral_1h_input_tokens")
    if isinstance(one_hour, bool) or not isinstance(one_hour, int):
        return 0
    return one_hour if 0 < one_hour <= usage.cache_write_tokens else 0


def _unknown(source: str) -> Price:
    return Price(cost_usd=None, source=_cut(source), unknown=True)


def _cut(source: str) -> str:
    return source[:_SOURCE_MAX]


def _refuse_network_update(*_args: object, **_kwargs: object) -> NoReturn:
    raise RuntimeError(
        "genai-prices' network updater is disabled in Agentry: prices come from the table "
        "bundled with the pinned package (DESIGN.md, Costs)"
    )


# start() (also behind `with UpdatePrices()`) launches the download thread; fetch() is the download.
UpdatePrices.start = _refuse_network_update  # type: ignore[method-assign]
UpdatePrices.fetch = _refuse_network_update  # type: ignore[method-assign]

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from backend.agent_types.models import ProviderName
from backend.core.schemas import Money, Schema

UNKNOWN_HELP = (
    "Sum of known costs in USD. null when every provider call counted here used a model "
    "without a known price; a lower bound when cost_unknown_calls > 0."
)


def _iso_only(value: Any) -> Any:
    # pydantic would read "1700000000" as a Unix time; the documented form is ISO 8601 only.
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}T", value):
        raise ValueError("must be an ISO 8601 date-time with a timezone")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_only)]


class MetricsQuery(BaseModel):
    """Query of GET /projects/{id}/metrics (validated: garbage answers 422)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: Instant | None = Field(
        None,
        alias="from",
        description="Include hourly buckets starting at or after this instant (default: all time)",
    )
    end: Instant | None = Field(
        None, alias="to", description="Include hourly buckets starting before this instant"
    )
    granularity: Literal["hour", "day"] = Field("day", description="Series bucket size (UTC)")


class UsageCounts(Schema):
    runs: int = Field(description="Finished runs (each run once, whatever its attempts)")
    total_tokens: int = Field(description="input + output + cache read + cache write")
    cost_usd: Money | None = Field(description=UNKNOWN_HELP)
    cost_unknown_calls: int = Field(description="Provider calls whose model had no price")


class Totals(UsageCounts):
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int
    calls: int = Field(description="Provider calls, retries and fallbacks included")
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class AgentUsage(UsageCounts):
    agent_id: uuid.UUID
    name: str | None


class ModelUsage(UsageCounts):
    provider: ProviderName
    model: str
    runs: int = Field(description="Finished runs whose final call used this model")
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class SeriesPoint(UsageCounts):
    bucket: datetime = Field(description="Start of the UTC hour or day")


class BudgetStatus(Schema):
    monthly_cost_limit_usd: Money | None
    monthly_token_limit: int | None
    month_cost_usd: Money = Field(description="Known cost this UTC calendar month")
    month_tokens: int
    exhausted: bool = Field(description="New runs are refused (402) while true")


class Window(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    start: datetime | None = Field(alias="from")
    end: datetime | None = Field(alias="to")
    granularity: Literal["hour", "day"]


_USAGE_EXAMPLE = {"runs": 3, "total_tokens": 5400, "cost_usd": 0.0342, "cost_unknown_calls": 0}
_PROJECT_METRICS_EXAMPLE: dict[str, Any] = {
    "window": {"from": "2026-11-01T00:00:00Z", "to": None, "granularity": "day"},
    "totals": {
        **_USAGE_EXAMPLE,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 0,
        "timed_out": 0,
        "calls": 4,
        "input_tokens": 3000,
        "output_tokens": 1200,
        "cache_read_tokens": 1000,
        "cache_write_tokens": 200,
    },
    "by_agent": [
        {"agent_id": "5b1f0c7e-3a51-4c1e-9d5a-0d7f3e2c9b11", "name": "triage", **_USAGE_EXAMPLE}
    ],
    "by_model": [
        {
            "provider": "anthropic",
            "model": "claude-sonnet-4-20250514",
            **_USAGE_EXAMPLE,
            "calls": 4,
            "input_tokens": 3000,
            "output_tokens": 1200,
            "cache_read_tokens": 1000,
            "cache_write_tokens": 200,
        }
    ],
    "series": [{"bucket": "2026-11-20T00:00:00Z", **_USAGE_EXAMPLE}],
    "budget": {
        "monthly_cost_limit_usd": 50.0,
        "monthly_token_limit": None,
        "month_cost_usd": 12.5,
        "month_tokens": 2100000,
        "exhausted": False,
    },
}


class ProjectMetrics(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [_PROJECT_METRICS_EXAMPLE]})
    window: Window
    totals: Totals
    by_agent: list[AgentUsage]
    by_model: list[ModelUsage]
    series: list[SeriesPoint] = Field(description="Buckets with usage only, oldest first")
    budget: BudgetStatus | None


class RunDurations(Schema):
    window_seconds: int
    count: int
    p50_seconds: float | None
    p95_seconds: float | None


class Workers(Schema):
    alive: int | None = Field(description="null when Redis does not answer")
    ids: list[str] | None


class RunsByStatus(Schema):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int


class AdminMetrics(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "queue_depth": 4,
                    "runs_by_status": {
                        "queued": 4,
                        "running": 12,
                        "succeeded": 10512,
                        "failed": 31,
                        "cancelled": 7,
                        "timed_out": 2,
                    },
                    "run_duration_last_hour": {
                        "window_seconds": 3600,
                        "count": 420,
                        "p50_seconds": 1.8,
                        "p95_seconds": 7.25,
                    },
                    "workers": {"alive": 2, "ids": ["api-1:4242:1f2e3d4c", "api-2:77:9a8b7c6d"]},
                    "usage": _PROJECT_METRICS_EXAMPLE["totals"],
                }
            ]
        }
    )
    queue_depth: int | None = Field(description="Jobs waiting in the queue; null if Redis is down")
    runs_by_status: RunsByStatus
    run_duration_last_hour: RunDurations
    workers: Workers
    usage: Totals = Field(description="All projects, deleted ones included")

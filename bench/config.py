"""Bench configuration from the environment (all optional), and the servers' environments."""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.config import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / ".bench"
RATE_LIMIT_MULTIPLIER = "1e9"  # limits never trip during the bench; the counting still runs


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(float(os.environ.get(name, default)))


def _sections() -> list[str]:
    raw = os.environ.get("BENCH_SECTIONS", "http,pipeline,usershape,metrics,webhooks,tools")
    return [s.strip() for s in raw.split(",") if s.strip()]


@dataclass
class BenchConfig:
    seconds: float = field(default_factory=lambda: _float("BENCH_SECONDS", 5))
    warmup: float = field(default_factory=lambda: _float("BENCH_WARMUP", 1))
    connections: int = field(default_factory=lambda: _int("BENCH_CONNECTIONS", 32))
    rounds: int = field(default_factory=lambda: max(1, _int("BENCH_ROUNDS", 2)))
    pin: bool = field(default_factory=lambda: os.environ.get("BENCH_PIN", "1") != "0")
    sections: list[str] = field(default_factory=_sections)
    # Issue 4
    pipeline_runs: int = field(default_factory=lambda: _int("BENCH_PIPELINE_RUNS", 1000))
    pickups: int = field(default_factory=lambda: _int("BENCH_PICKUPS", 50))
    slow_agents: int = field(default_factory=lambda: _int("BENCH_SLOW_AGENTS", 500))
    slow_latency_ms: int = field(default_factory=lambda: _int("BENCH_SLOW_LATENCY_MS", 1000))
    worker_max_jobs: int = field(
        default_factory=lambda: _int(
            "BENCH_WORKER_MAX_JOBS", Settings.model_fields["WORKER_MAX_JOBS"].default
        )
    )
    # Issue 9: the user's shape (`agentry dev` over HTTP)
    usershape_runs: int = field(default_factory=lambda: _int("BENCH_USERSHAPE_RUNS", 500))
    usershape_slow: int = field(default_factory=lambda: _int("BENCH_USERSHAPE_SLOW", 200))
    # Issue 10: runs that act (model → MCP tool → model), one per agent
    tool_runs: int = field(default_factory=lambda: _int("BENCH_TOOL_RUNS", 500))
    # Issue 5
    max_runs: int = field(default_factory=lambda: _int("BENCH_MAX_RUNS", 1_000_000))
    metrics_agents: int = field(default_factory=lambda: _int("BENCH_METRICS_AGENTS", 20))
    metrics_days: int = field(default_factory=lambda: _int("BENCH_METRICS_DAYS", 7))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def agentry_env(database_url: str, redis_url: str, **overrides: object) -> dict[str, str]:
    """Environment of an Agentry API or worker process: production settings, quiet logs."""
    settings_names = set(Settings.model_fields)
    # Nothing from the caller's environment may reconfigure the servers under test.
    env = {k: v for k, v in os.environ.items() if k not in settings_names}
    env.update(
        {
            "ENVIRONMENT": "production",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_MULTIPLIER": RATE_LIMIT_MULTIPLIER,
            "QUEUE_NAME": "agentry:bench",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


SECRET_KEY = secrets.token_urlsafe(48)

"""Settings from the environment and `.env`; one instance per process via get_settings()."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_WEAK_SECRETS = {"", "changeme", "change-me", "secret", "dev"}
# Defaults published somewhere (ours: `agentry dev`'s agentry-admin) or guessed first.
_WEAK_PASSWORDS = _WEAK_SECRETS | {
    "agentry-admin",
    "agentry",
    "admin",
    "administrator",
    "password",
    "password1",
    "password123",
    "12345678",
    "123456789",
    "qwertyuiop",
    "letmein",
    "changeit",
    "change-it",
    "changemenow",
}


def _weak_password(password: str) -> bool:
    return len(password) < 8 or password.strip().lower() in _WEAK_PASSWORDS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # "dev" is set by `agentry dev`; it allows a generated SECRET_KEY and embedded services.
    ENVIRONMENT: Literal["dev", "test", "production"] = "production"

    DATABASE_URL: str | None = None
    REDIS_URL: str | None = None
    DATA_DIR: Path = Path(".data")
    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)

    SECRET_KEY: SecretStr | None = None
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(15, ge=1)
    REFRESH_TOKEN_EXPIRE_DAYS: int = Field(14, ge=1)
    # Maintenance purges refresh-token families this long after their newest token expired.
    REFRESH_TOKEN_RETENTION_DAYS: int = Field(7, ge=0)
    # Usage rollups keep hourly resolution this many whole UTC days; maintenance merges older
    # hours into one row per day (metrics read 24x fewer rows for old usage).
    USAGE_HOURLY_RETENTION_DAYS: int = Field(3, ge=1)

    FIRST_SUPERUSER_EMAIL: str | None = None
    FIRST_SUPERUSER_PASSWORD: SecretStr | None = None
    REGISTRATION_ENABLED: bool = True
    CORS_ORIGINS: list[str] = []
    # Peers whose X-Forwarded-For/-Proto are believed (comma-separated IPs or CIDRs, "*" for
    # any). Empty: none, so a client cannot choose the IP its anonymous rate limits count on.
    FORWARDED_ALLOW_IPS: str = ""
    # Request bodies over this are refused (413) before they are read whole.
    MAX_REQUEST_BODY_BYTES: int = Field(1_048_576, ge=1024)

    RATE_LIMIT_ENABLED: bool = True
    RATE_LIMIT_MULTIPLIER: float = Field(1.0, gt=0)
    # JSON object overriding per-route limits, e.g. {"agents.spawn": "50/minute"}.
    RATE_LIMITS: str | None = None

    ANTHROPIC_API_KEY: SecretStr | None = None
    OPENAI_API_KEY: SecretStr | None = None
    ANTHROPIC_BASE_URL: str | None = None
    OPENAI_BASE_URL: str | None = None

    WORKER_MAX_JOBS: int = Field(200, ge=1)
    # Prefix of the ARQ queue name; lets several deployments (or test runs) share one Redis.
    QUEUE_NAME: str = "agentry:queue"
    # Runs and workers (backend/runs). Pickup latency is up to one poll delay.
    WORKER_POLL_DELAY_SECONDS: float = Field(0.02, gt=0, le=5)
    # Each worker refreshes its liveness key (TTL below) and its running runs' heartbeat_at.
    WORKER_HEARTBEAT_SECONDS: float = Field(5.0, gt=0)
    WORKER_TTL_SECONDS: float = Field(30.0, gt=0)
    # A job a worker took stays its own this long without renewal (the worker renews it while
    # alive): after a crash, another worker takes the job again within this.
    WORKER_LEASE_SECONDS: float = Field(15.0, ge=1)
    # Where `agentry worker` writes its health (for `agentry worker-health`); unset: nowhere.
    WORKER_HEALTH_FILE: str | None = None
    # Sweeper (re-enqueue lost queued runs) and reaper (recover runs of dead workers) period.
    RUN_SWEEP_INTERVAL_SECONDS: int = Field(5, ge=1, le=30)
    # A running run whose heartbeat is older than its attempt timeout + this grace is reaped.
    RUN_REAP_GRACE_SECONDS: float = Field(30.0, ge=0)
    # Retry backoff: min(max, base * 2**(attempt-1)), half of it jittered.
    RUN_RETRY_BASE_SECONDS: float = Field(1.0, ge=0)
    RUN_RETRY_MAX_SECONDS: float = Field(60.0, ge=0)
    # Conversation messages (newest, sent oldest first) given to the provider with each run.
    RUN_HISTORY_MAX_MESSAGES: int = Field(100, ge=0, le=10_000)
    # Per-run event streams in Redis: approximate length cap, and retention after the run ends.
    RUN_EVENTS_MAXLEN: int = Field(10_000, ge=10)
    RUN_EVENTS_RETENTION_SECONDS: int = Field(3600, ge=1)
    # SSE comment line sent while a run is quiet (API.md: at least every 15 s).
    SSE_KEEPALIVE_SECONDS: float = Field(15.0, gt=0, le=15)
    # Long-lived requests (SSE streams, ?wait submits, WebSockets) open at once per caller.
    MAX_STREAMS_PER_CALLER: int = Field(20, ge=1)
    # How often a long-lived request re-checks its caller's access (ended once it is lost).
    STREAM_RECHECK_SECONDS: float = Field(5.0, gt=0, le=60)

    # Webhooks (backend/webhooks). Endpoint URLs in private, loopback and link-local ranges
    # are refused unless this is true (`agentry dev` sets it).
    WEBHOOK_ALLOW_PRIVATE_URLS: bool = False
    # Seconds between a failed attempt and the next, one retry per entry; then `failed`.
    WEBHOOK_RETRY_SCHEDULE: str = "5,300,1800,7200,18000,36000,36000"
    WEBHOOK_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=60)
    # Deliveries in flight per worker, and per endpoint per worker (a slow endpoint takes only
    # its share).
    WEBHOOK_MAX_IN_FLIGHT: int = Field(256, ge=1)
    WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: int = Field(32, ge=1)
    # How often an idle worker looks for due deliveries (event-to-delivery latency).
    WEBHOOK_POLL_SECONDS: float = Field(0.05, gt=0, le=10)
    # False: this worker delivers no webhooks (its runs still write their events); other
    # workers deliver them.
    WEBHOOK_DELIVERY_ENABLED: bool = True
    # Maintenance deletes events this many days old once no delivery of them is pending.
    WEBHOOK_EVENT_RETENTION_DAYS: int = Field(7, ge=1)

    # Set by `agentry dev`: the endpoint of the demo MCP server it serves beside the API
    # (backend/tools/demo_server.py), on a free local port chosen at each start.
    DEMO_MCP_URL: str | None = None

    DB_POOL_SIZE: int = Field(20, ge=1)
    DB_MAX_OVERFLOW: int = Field(20, ge=0)

    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: Literal["json", "console"] = "json"

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip().startswith("["):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("FORWARDED_ALLOW_IPS")
    @classmethod
    def _check_forwarded(cls, v: str) -> str:
        for entry in _split(v):
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"not an IP address or CIDR network: {entry!r}") from None
        return v

    @field_validator("WEBHOOK_RETRY_SCHEDULE")
    @classmethod
    def _check_schedule(cls, v: str) -> str:
        try:
            delays = [float(part) for part in _split(v)]
        except ValueError:
            raise ValueError("comma-separated seconds, e.g. 5,300,1800") from None
        if any(delay < 0 for delay in delays):
            raise ValueError("delays cannot be negative")
        return v

    @property
    def webhook_retry_delays(self) -> list[float]:
        return [float(part) for part in _split(self.WEBHOOK_RETRY_SCHEDULE)]

    @property
    def forwarded_allow_ips(self) -> list[str]:
        return _split(self.FORWARDED_ALLOW_IPS)

    @model_validator(mode="after")
    def _enforce_secrets(self) -> Settings:
        if self.ENVIRONMENT == "dev":
            return self
        key = self.SECRET_KEY.get_secret_value() if self.SECRET_KEY else ""
        if key.lower() in _WEAK_SECRETS or len(key) < 32:
            raise ValueError(
                "SECRET_KEY must be set to a random string of at least 32 characters "
                "outside dev mode (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        password = self.FIRST_SUPERUSER_PASSWORD
        if password is not None and _weak_password(password.get_secret_value()):
            raise ValueError(
                "FIRST_SUPERUSER_PASSWORD must be at least 8 characters and not a published "
                "default (such as `agentry-admin`, `changeme` or `password`) outside dev mode"
            )
        return self

    @property
    def secret_key(self) -> str:
        assert self.SECRET_KEY is not None, "SECRET_KEY is resolved before the app starts"
        return self.SECRET_KEY.get_secret_value()


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""Python client for the Agentry API (and the `agentryctl` CLI built on it)."""

from agentry_client._core import RetryPolicy, ToolError
from agentry_client.aio import AsyncClient
from agentry_client.client import Client
from agentry_client.errors import (
    AgentryError,
    BadRequest,
    BudgetExceeded,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from agentry_client.models import (
    Agent,
    AgentType,
    ApiKey,
    Event,
    Metrics,
    Project,
    Run,
    Step,
    User,
    Webhook,
)

__version__ = "0.1.0"
__all__ = [
    "Agent",
    "AgentType",
    "AgentryError",
    "ApiKey",
    "AsyncClient",
    "BadRequest",
    "BudgetExceeded",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "Metrics",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "Project",
    "RateLimited",
    "RetryPolicy",
    "Run",
    "ServerError",
    "Step",
    "ToolError",
    "Unauthorized",
    "Unavailable",
    "User",
    "ValidationError",
    "Webhook",
]

"""Every domain's models, imported once so Alembic sees one metadata."""

from backend.agent_types.models import AgentType
from backend.agents.models import Agent, AgentEvent
from backend.audit.models import AuditLog
from backend.auth.models import ApiKey, RefreshToken, User
from backend.core.db import Base
from backend.core.idempotency import IdempotencyKey
from backend.projects.models import Project, ProjectMember
from backend.runs.models import ConversationMessage, ProviderCall, Run
from backend.usage.models import UsageRollup
from backend.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

metadata = Base.metadata

__all__ = [
    "Agent",
    "AgentEvent",
    "AgentType",
    "ApiKey",
    "AuditLog",
    "ConversationMessage",
    "IdempotencyKey",
    "Project",
    "ProjectMember",
    "ProviderCall",
    "RefreshToken",
    "Run",
    "UsageRollup",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "metadata",
]

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from backend.core.schemas import Schema, examples


class AuditEntry(Schema):
    model_config = examples(
        {
            "id": "2b3c4d5e-6f70-4a1b-8c2d-3e4f5a6b7c8d",
            "actor_user_id": "8d7e2f4a-1b3c-4d5e-9f60-7a8b9c0d1e2f",
            "actor_api_key_id": None,
            "project_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
            "action": "agent.spawn",
            "target_type": "agent",
            "target_id": "5b1f0c7e-3a51-4c1e-9d5a-0d7f3e2c9b11",
            "details": {},
            "request_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    id: uuid.UUID
    actor_user_id: uuid.UUID | None
    actor_api_key_id: uuid.UUID | None
    project_id: uuid.UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    created_at: datetime

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from backend.core.schemas import Schema


class AuditEntry(Schema):
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

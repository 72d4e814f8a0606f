from __future__ import annotations

from fastapi import APIRouter

from backend.audit import service
from backend.audit.schemas import AuditEntry
from backend.auth.dependencies import SuperuserSession, rate_limit
from backend.core.db import Session
from backend.core.schemas import Page, Paging, error_responses

router = APIRouter()


@router.get(
    "/admin/audit-log",
    response_model=Page[AuditEntry],
    operation_id="list_audit_log",
    summary="The whole audit log (superuser)",
    responses=error_responses(401, 403, 422, 429),
    dependencies=[rate_limit("audit.admin", "60/minute")],
)
async def admin_audit_log(principal: SuperuserSession, session: Session, paging: Paging):
    return paging.build(*await service.list_entries(session, paging))

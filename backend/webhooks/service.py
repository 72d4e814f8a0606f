"""Webhook endpoints and their deliveries: the API's side (admin+, logins only, audited)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit import service as audit
from backend.config import Settings
from backend.core.db import utcnow
from backend.core.errors import NotFound
from backend.core.schemas import PageParams
from backend.projects.dependencies import ProjectContext
from backend.webhooks import outbox, signing, urls
from backend.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from backend.webhooks.schemas import WebhookCreate, WebhookUpdate

# The old secret keeps signing this long after a rotation (API.md).
ROTATION_OVERLAP = timedelta(hours=24)


def _audit(
    session: AsyncSession, ctx: ProjectContext, action: str, target: uuid.UUID, **details: Any
) -> None:
    audit.record(
        session,
        ctx.principal,
        action,
        project_id=ctx.project.id,
        target_type="webhook",
        target_id=target,
        details=details or None,
    )


async def create(
    session: AsyncSession, ctx: ProjectContext, data: WebhookCreate, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    """The endpoint and its secret (the only time the secret leaves the server)."""
    await urls.validate(data.url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        project_id=ctx.project.id,
        url=data.url,
        events=list(dict.fromkeys(data.events)),
        description=data.description,
        enabled=data.enabled,
        secret_encrypted=signing.encrypt(secret, settings.secret_key),
    )
    session.add(endpoint)
    await session.flush()
    _audit(session, ctx, "webhook.create", endpoint.id, url=data.url, events=endpoint.events)
    return endpoint, secret


async def get(session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == webhook_id, WebhookEndpoint.project_id == ctx.project.id
        )
    )
    if endpoint is None:
        raise NotFound(f"Webhook {webhook_id} not found")
    return endpoint


async def _locked(
    session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID
) -> WebhookEndpoint:
    endpoint = await session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == webhook_id, WebhookEndpoint.project_id == ctx.project.id)
        .with_for_update()
    )
    if endpoint is None:
        raise NotFound(f"Webhook {webhook_id} not found")
    return endpoint


async def list_endpoints(
    session: AsyncSession, ctx: ProjectContext, paging: PageParams
) -> tuple[list[WebhookEndpoint], int]:
    where = WebhookEndpoint.project_id == ctx.project.id
    total = await session.scalar(select(func.count()).select_from(WebhookEndpoint).where(where))
    rows = await session.scalars(
        select(WebhookEndpoint)
        .where(where)
        .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())
        .offset(paging.offset)
        .limit(paging.limit)
    )
    return list(rows), total or 0


async def update(
    session: AsyncSession,
    ctx: ProjectContext,
    webhook_id: uuid.UUID,
    data: WebhookUpdate,
    settings: Settings,
) -> WebhookEndpoint:
    endpoint = await _locked(session, ctx, webhook_id)
    changes = data.model_dump(exclude_unset=True)
    if "url" in changes:
        await urls.validate(changes["url"], allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS)
    if "events" in changes:
        changes["events"] = list(dict.fromkeys(changes["events"]))
    for name, value in changes.items():
        setattr(endpoint, name, value)
    endpoint.updated_at = utcnow()
    await session.flush()
    _audit(session, ctx, "webhook.update", endpoint.id, **changes)
    return endpoint


async def delete(session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID) -> None:
    endpoint = await _locked(session, ctx, webhook_id)
    await session.delete(endpoint)  # its deliveries go with it (ON DELETE CASCADE)
    await session.flush()
    _audit(session, ctx, "webhook.delete", webhook_id, url=endpoint.url)


async def rotate_secret(
    session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID, settings: Settings
) -> str:
    """A new secret; the current one keeps signing (alongside) for ROTATION_OVERLAP."""
    endpoint = await _locked(session, ctx, webhook_id)
    secret = signing.new_secret()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = utcnow() + ROTATION_OVERLAP
    endpoint.secret_encrypted = signing.encrypt(secret, settings.secret_key)
    endpoint.updated_at = utcnow()
    await session.flush()
    _audit(session, ctx, "webhook.rotate_secret", endpoint.id)
    return secret


async def send_test(session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID) -> uuid.UUID:
    """A webhook.test event to this endpoint only, whatever it subscribes to; its id."""
    endpoint = await get(session, ctx, webhook_id)
    event_id = await outbox.record_one(
        session, outbox.EventType.webhook_test, ctx.project.id, endpoint.id, {}
    )
    _audit(session, ctx, "webhook.test", endpoint.id, event_id=str(event_id))
    return event_id


async def list_deliveries(
    session: AsyncSession,
    ctx: ProjectContext,
    webhook_id: uuid.UUID,
    paging: PageParams,
    status: DeliveryStatus | None,
) -> tuple[list[dict[str, Any]], int]:
    endpoint = await get(session, ctx, webhook_id)
    where = [WebhookDelivery.endpoint_id == endpoint.id]
    if status is not None:
        where.append(WebhookDelivery.status == status.value)
    total = await session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where))
    rows = await session.execute(
        select(WebhookDelivery, WebhookEvent.type)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(*where)
        .order_by(WebhookDelivery.seq.desc(), WebhookDelivery.id.desc())
        .offset(paging.offset)
        .limit(paging.limit)
    )
    items = [
        {**{c.key: getattr(d, c.key) for c in WebhookDelivery.__table__.c}, "event_type": kind}
        for d, kind in rows
    ]
    return items, total or 0


async def redeliver(
    session: AsyncSession, ctx: ProjectContext, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> None:
    """One more attempt of the delivery, now (same event, so the same webhook-id)."""
    endpoint = await get(session, ctx, webhook_id)
    moved = await session.execute(
        sql_update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
        .values(status=DeliveryStatus.pending.value, next_attempt_at=func.now())
        .returning(WebhookDelivery.id)
    )
    if moved.first() is None:
        raise NotFound(f"Delivery {delivery_id} not found")
    _audit(session, ctx, "webhook.redeliver", endpoint.id, delivery_id=str(delivery_id))

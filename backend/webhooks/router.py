from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from backend.access import WebhookManager, rate_limit
from backend.core.db import Session
from backend.core.schemas import Page, Paging, error_responses
from backend.webhooks import service
from backend.webhooks.models import DeliveryStatus
from backend.webhooks.schemas import (
    DeliveryOut,
    RedeliveryQueued,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookSecret,
    WebhookTestSent,
    WebhookUpdate,
)

router = APIRouter(prefix="/projects/{project_id}/webhooks")
_ERR = error_responses(401, 403, 404, 422, 429)


@router.post(
    "",
    response_model=WebhookCreated,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_webhook",
    summary="Register a webhook endpoint (admin+, login only); the secret is shown only here",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.create", "20/minute")],
)
async def create_webhook(
    body: WebhookCreate, ctx: WebhookManager, session: Session, request: Request
):
    endpoint, secret = await service.create(session, ctx, body, request.app.state.settings)
    return {**WebhookOut.model_validate(endpoint).model_dump(), "secret": secret}


@router.get(
    "",
    response_model=Page[WebhookOut],
    operation_id="list_webhooks",
    summary="List the project's webhook endpoints, newest first (no secrets)",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.list", "60/minute")],
)
async def list_webhooks(ctx: WebhookManager, session: Session, paging: Paging):
    return paging.build(*await service.list_endpoints(session, ctx, paging))


@router.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    operation_id="get_webhook",
    summary="Get a webhook endpoint (no secret)",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.get", "120/minute")],
)
async def get_webhook(webhook_id: uuid.UUID, ctx: WebhookManager, session: Session):
    return await service.get(session, ctx, webhook_id)


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    operation_id="update_webhook",
    summary="Change a webhook endpoint's URL, events, description or enabled flag",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.update", "30/minute")],
)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    ctx: WebhookManager,
    session: Session,
    request: Request,
):
    return await service.update(session, ctx, webhook_id, body, request.app.state.settings)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_webhook",
    summary="Delete a webhook endpoint and its pending deliveries",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.delete", "30/minute")],
)
async def delete_webhook(webhook_id: uuid.UUID, ctx: WebhookManager, session: Session) -> None:
    await service.delete(session, ctx, webhook_id)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookSecret,
    operation_id="rotate_webhook_secret",
    summary="A new secret; deliveries are signed with the old and the new one for 24 hours",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.rotate", "10/minute")],
)
async def rotate_webhook_secret(
    webhook_id: uuid.UUID, ctx: WebhookManager, session: Session, request: Request
):
    settings = request.app.state.settings
    return {"secret": await service.rotate_secret(session, ctx, webhook_id, settings)}


@router.post(
    "/{webhook_id}/test",
    response_model=WebhookTestSent,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="test_webhook",
    summary="Send a webhook.test event to this endpoint (whatever events it subscribes to)",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.test", "10/minute")],
)
async def test_webhook(webhook_id: uuid.UUID, ctx: WebhookManager, session: Session):
    return {"event_id": await service.send_test(session, ctx, webhook_id)}


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[DeliveryOut],
    operation_id="list_webhook_deliveries",
    summary="The endpoint's deliveries, newest first",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.deliveries", "60/minute")],
)
async def list_webhook_deliveries(
    webhook_id: uuid.UUID,
    ctx: WebhookManager,
    session: Session,
    paging: Paging,
    status_filter: Annotated[
        DeliveryStatus | None, Query(alias="status", description="Only this status")
    ] = None,
):
    items, total = await service.list_deliveries(session, ctx, webhook_id, paging, status_filter)
    return paging.build(items, total)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response_model=RedeliveryQueued,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="redeliver_webhook",
    summary="Attempt a delivery again now (the same event: the same webhook-id)",
    responses=_ERR,
    dependencies=[rate_limit("webhooks.redeliver", "30/minute")],
)
async def redeliver_webhook(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, ctx: WebhookManager, session: Session
):
    await service.redeliver(session, ctx, webhook_id, delivery_id)
    return {"delivery_id": delivery_id}

"""The webhook outbox: deliveries of run outcomes, their attempts, dead letters and redelivery."""

from __future__ import annotations

from typing import Literal

import msgspec
from quart import Response

from cuelog.actors import Delivery, DeliveryStatus
from cuelog.http._auth import Routes, principal
from cuelog.http._params import CURSOR, ChoiceParam, TextParam, limit
from cuelog.http._services import Services, page_json
from cuelog.http._wire import json_response, to_json

DELIVERIES_LIMIT = limit(50, 500)
STATUS = ChoiceParam(
    name="status",
    choices=("any", "pending", "delivered", "failed"),
    default="any",
    description="failed: the dead letters.",
)
RUN_ID = TextParam(name="run_id", description="Only the deliveries of this run.")


class DeliveryAttempt(msgspec.Struct, kw_only=True):
    attempt: int
    outcome: Literal["delivered", "retry", "failed"]
    at: float
    status_code: int | None
    error: str | None
    next_at: float | None


class WebhookDelivery(msgspec.Struct, kw_only=True):
    id: str
    object: str
    run_id: str
    url: str
    status: DeliveryStatus
    queued_at: float
    next_attempt_at: float | None
    attempts: list[DeliveryAttempt]
    body: str


class DeliveryList(msgspec.Struct, kw_only=True):
    data: list[WebhookDelivery]
    next_cursor: str | None


def delivery_json(delivery: Delivery) -> WebhookDelivery:
    return WebhookDelivery(
        id=delivery.id,
        object="webhook.delivery",
        run_id=delivery.run_id,
        url=delivery.url,
        status=delivery.status,
        queued_at=delivery.queued_at,
        next_attempt_at=delivery.next_at if delivery.status == "pending" else None,
        attempts=[
            DeliveryAttempt(
                attempt=a.attempt,
                outcome=a.outcome,
                at=a.at,
                status_code=a.status_code,
                error=a.error,
                next_at=a.next_at,
            )
            for a in delivery.attempts
        ],
        body=delivery.body,
    )


def register_webhook_routes(routes: Routes, services: Services) -> None:
    @routes.add(
        "/v1/webhooks/deliveries",
        ["GET"],
        "admin",
        answers={200: DeliveryList},
        params=[STATUS, RUN_ID, DELIVERIES_LIMIT, CURSOR],
    )
    async def list_deliveries() -> Response:
        """Webhook deliveries in id order; `status=failed` lists the dead letters."""
        status = STATUS.get()
        page, next_cursor = await services.outbox().list_deliveries(
            status=None if status == "any" else status,  # type: ignore[arg-type]
            run_id=RUN_ID.get(),
            after=CURSOR.get(),
            limit=DELIVERIES_LIMIT.get(),
        )
        return page_json([delivery_json(d) for d in page], next_cursor)

    @routes.add(
        "/v1/webhooks/deliveries/<delivery_id>",
        ["GET"],
        "admin",
        answers={200: WebhookDelivery},
    )
    async def get_delivery(delivery_id: str) -> Response:
        """One delivery: its body, status and every attempt."""
        return json_response(to_json(delivery_json(services.outbox().get(delivery_id))))

    @routes.add(
        "/v1/webhooks/deliveries/<delivery_id>/redeliver",
        ["POST"],
        "admin",
        answers={202: WebhookDelivery},
    )
    async def redeliver(delivery_id: str) -> Response:
        """Send a dead letter again, with the same id and body and a new retry window."""
        delivery = await services.outbox().redeliver(
            delivery_id, actor=principal().key_id or "local"
        )
        return json_response(to_json(delivery_json(delivery)), 202)

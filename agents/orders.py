"""The orders projection agent: ``order-events`` → the ``orders`` table.

Bad input (invalid JSON, missing fields, an event for another key) is logged
with its topic, partition and offset and skipped; the agent goes on with the
next record. (Dead-letter topics arrive with the failure-handling issue.)
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from schemas.envelope import decode_envelope
from schemas.exceptions import EventError, ValidationError
from streams.settings import Settings
from streams.topics import ORDER_EVENTS
from tables.orders import OrderView, apply_order_event

logger = logging.getLogger(__name__)


def register(app: faust.App, settings: Settings, orders: Any) -> Any:
    """Declare the projection agent on ``app``; returns the Faust agent."""
    topic = app.topic(
        settings.topic(ORDER_EVENTS.name),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    @app.agent(topic, name="orders-projection")
    async def project_orders(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            try:
                apply_record(orders, msg.key, msg.value)
            except EventError as exc:
                logger.warning(
                    "skipped bad record %s[%d]@%d: %s: %s",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    type(exc).__name__,
                    exc,
                )

    return project_orders


def apply_record(orders: Any, key: bytes | None, value: bytes | None) -> OrderView | None:
    """Decode one record and apply it to ``orders``; return the new view, if any."""
    envelope = decode_envelope(value)
    order_id = envelope.data.get("orderId")
    if isinstance(order_id, str) and key is not None and key.decode("utf-8", "replace") != order_id:
        raise ValidationError(
            "key", f'the order id "{order_id}" (events are keyed by orderId)', key
        )
    current = orders.get(order_id) if isinstance(order_id, str) else None
    view = apply_order_event(OrderView.from_dict(current) if current else None, envelope)
    if view is not None:
        orders[view.orderId] = view.to_dict()
        logger.debug(
            "applied %s %s to order %s (correlation %s)",
            envelope.name,
            envelope.id,
            view.orderId,
            envelope.correlation_id,
        )
    return view

"""The ``orders`` read model: orderId → the order as the events describe it.

:func:`apply_order_event` is the whole projection, a pure function with no
broker or table in sight, so it is unit-tested directly and reused by replays.

Rules (deterministic, independent of timing):

- ``order.placed`` → ``pending``; ``order.payment_confirmed`` → ``confirmed``;
  ``order.shipped`` → ``shipped``; ``order.cancelled`` → ``cancelled``.
- An event whose id is among the order's last 16 applied event ids is a
  duplicate (a redelivery, a producer retry) and changes nothing.
- ``order.saga_completed`` / ``order.saga_failed`` (the order saga's outcome,
  agents/saga.py) set ``saga`` (outcome, sagaId, failedStep, reason, at) and
  leave the status as the order events set it.
- An event for an order that was never placed (``order.shipped`` first)
  creates a partial view with the status that event implies and no customer,
  items or totals. A later ``order.placed`` fills those in without moving the
  status back to ``pending``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "orders"

STATUS_BY_EVENT = {
    "order.placed": "pending",
    "order.payment_confirmed": "confirmed",
    "order.shipped": "shipped",
    "order.cancelled": "cancelled",
}
SAGA_OUTCOMES = {"order.saga_completed": "completed", "order.saga_failed": "failed"}
ORDER_EVENTS = frozenset(STATUS_BY_EVENT) | frozenset(SAGA_OUTCOMES)
RECENT_IDS = 16
"""Event ids remembered per order for deduplication (an order has a handful of events)."""


class OrderView(TypedDict):
    """The read model of one order, served as JSON by ``GET /orders/{orderId}``.

    A plain dict on the hot path (a dataclass conversion per event costs more
    than the rest of the projection); this TypedDict documents its fields.
    """

    orderId: str
    """Id of the order; also the Kafka key of its events and the table key."""
    status: str
    """pending, confirmed, shipped or cancelled."""
    customerId: str | None
    """Customer who placed the order (None until ``order.placed`` is seen)."""
    items: list[dict[str, Any]]
    """Order lines as placed: sku, quantity, unitPrice."""
    totalAmount: float | None
    """Order total as placed."""
    currency: str | None
    """ISO currency code of the amounts, when the producer gives one."""
    paymentId: str | None
    """Id of the confirmed payment."""
    paidAmount: float | None
    """Amount of the confirmed payment."""
    trackingNumber: str | None
    """Carrier tracking number once shipped."""
    carrier: str | None
    """Carrier name once shipped, when given."""
    cancelReason: str | None
    """Reason given with ``order.cancelled``."""
    placedAt: str | None
    """Timestamp of ``order.placed``."""
    confirmedAt: str | None
    """Timestamp of ``order.payment_confirmed``."""
    shippedAt: str | None
    """Timestamp of ``order.shipped``."""
    cancelledAt: str | None
    """Timestamp of ``order.cancelled``."""
    updatedAt: str | None
    """Timestamp of the last applied event."""
    lastEventId: str | None
    """Id of the last applied event."""
    recentEventIds: list[str]
    """Ids of the last RECENT_IDS applied events: redeliveries of them are ignored."""
    lastEventName: str | None
    """Name of the last applied event."""
    eventCount: int
    """How many events have been applied to this view."""
    saga: NotRequired[dict[str, Any]]
    """The order saga's outcome, once it finished: outcome (completed or failed),
    sagaId, failedStep, reason, at."""


def new_view(order_id: str, status: str) -> OrderView:
    """The view of an order before any event is applied."""
    return {
        "orderId": order_id, "status": status, "customerId": None, "items": [],
        "totalAmount": None, "currency": None, "paymentId": None, "paidAmount": None,
        "trackingNumber": None, "carrier": None, "cancelReason": None, "placedAt": None,
        "confirmedAt": None, "shippedAt": None, "cancelledAt": None, "updatedAt": None,
        "lastEventId": None, "recentEventIds": [], "lastEventName": None, "eventCount": 0,
    }  # fmt: skip


def apply_order_event(view: OrderView | None, event: Envelope) -> OrderView | None:
    """Apply one order event to the current view (which is not modified).

    Returns the new view, or ``None`` when the event changes nothing (a
    duplicate of a recently applied event). Raises :class:`ValidationError`
    when the event's data lacks a field its name requires.
    """
    name = event.name
    if name not in ORDER_EVENTS:
        raise ValidationError("name", f"one of {', '.join(sorted(ORDER_EVENTS))}", name)
    if view is not None and event.id in view["recentEventIds"]:
        return None
    data = event.data
    order_id = _str(data, "orderId")
    status = STATUS_BY_EVENT.get(name, "pending")
    new: OrderView = new_view(order_id, status) if view is None else view.copy()
    ts = event.timestamp
    if name == "order.placed":
        new["customerId"] = _str(data, "customerId")
        new["items"] = _list(data, "items")
        new["totalAmount"] = _number(data, "totalAmount")
        new["currency"] = _opt_str(data, "currency")
        new["placedAt"] = ts
        if new["eventCount"] == 0:
            new["status"] = "pending"
    elif name == "order.payment_confirmed":
        new["status"] = "confirmed"
        new["paymentId"] = _str(data, "paymentId")
        new["paidAmount"] = _number(data, "amount")
        new["confirmedAt"] = ts
    elif name == "order.shipped":
        new["status"] = "shipped"
        new["trackingNumber"] = _str(data, "trackingNumber")
        new["carrier"] = _opt_str(data, "carrier")
        new["shippedAt"] = ts
    elif name in SAGA_OUTCOMES:
        new["saga"] = {
            "outcome": SAGA_OUTCOMES[name],
            "sagaId": _str(data, "sagaId"),
            "failedStep": data.get("failedStep"),
            "reason": data.get("reason"),
            "at": ts,
        }
    else:  # order.cancelled
        new["status"] = "cancelled"
        new["cancelReason"] = _opt_str(data, "reason")
        new["cancelledAt"] = ts
    recent = new["recentEventIds"]
    new["recentEventIds"] = [*recent[len(recent) - RECENT_IDS + 1 :], event.id]
    new["updatedAt"] = ts
    new["lastEventId"] = event.id
    new["lastEventName"] = name
    new["eventCount"] += 1
    return new


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, MISSING)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"data.{key}", "a non-empty string", value)
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"data.{key}", "a string or null", value)
    return value


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key, MISSING)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"data.{key}", "a number", value)
    return value


def _list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, MISSING)
    if not isinstance(value, list):
        raise ValidationError(f"data.{key}", "an array", value)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValidationError(f"data.{key}[{i}]", "an object", item)
    return value

"""The ``orders`` read model: orderId → the order as the events describe it.

:func:`apply_order_event` is the whole projection, a pure function with no
broker or table in sight, so it is unit-tested directly and reused by replays.

Rules (deterministic, independent of timing):

- ``order.placed`` → ``pending``; ``order.payment_confirmed`` → ``confirmed``;
  ``order.shipped`` → ``shipped``; ``order.cancelled`` → ``cancelled``.
- An event whose id is among the order's last 16 applied event ids is a
  duplicate (a redelivery, a producer retry) and changes nothing.
- An event for an order that was never placed (``order.shipped`` first)
  creates a partial view with the status that event implies and no customer,
  items or totals. A later ``order.placed`` fills those in without moving the
  status back to ``pending``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "orders"

STATUS_BY_EVENT = {
    "order.placed": "pending",
    "order.payment_confirmed": "confirmed",
    "order.shipped": "shipped",
    "order.cancelled": "cancelled",
}
ORDER_EVENTS = frozenset(STATUS_BY_EVENT)
RECENT_IDS = 16
"""Event ids remembered per order for deduplication (an order has a handful of events)."""


@dataclass(frozen=True, slots=True)
class OrderView:
    """The read model of one order, served as JSON by ``GET /orders/{orderId}``."""

    orderId: str
    """Id of the order; also the Kafka key of its events and the table key."""
    status: str
    """pending, confirmed, shipped or cancelled."""
    customerId: str | None = None
    """Customer who placed the order (None until ``order.placed`` is seen)."""
    items: list[dict[str, Any]] = field(default_factory=list)
    """Order lines as placed: sku, quantity, unitPrice."""
    totalAmount: float | None = None
    """Order total as placed."""
    currency: str | None = None
    """ISO currency code of the amounts, when the producer gives one."""
    paymentId: str | None = None
    """Id of the confirmed payment."""
    paidAmount: float | None = None
    """Amount of the confirmed payment."""
    trackingNumber: str | None = None
    """Carrier tracking number once shipped."""
    carrier: str | None = None
    """Carrier name once shipped, when given."""
    cancelReason: str | None = None
    """Reason given with ``order.cancelled``."""
    placedAt: str | None = None
    """Timestamp of ``order.placed``."""
    confirmedAt: str | None = None
    """Timestamp of ``order.payment_confirmed``."""
    shippedAt: str | None = None
    """Timestamp of ``order.shipped``."""
    cancelledAt: str | None = None
    """Timestamp of ``order.cancelled``."""
    updatedAt: str | None = None
    """Timestamp of the last applied event."""
    lastEventId: str | None = None
    """Id of the last applied event."""
    recentEventIds: list[str] = field(default_factory=list)
    """Ids of the last RECENT_IDS applied events: redeliveries of them are ignored."""
    lastEventName: str | None = None
    """Name of the last applied event."""
    eventCount: int = 0
    """How many events have been applied to this view."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the table and served over HTTP."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> OrderView:
        """Rebuild a view from its stored JSON form."""
        return cls(**doc)


def apply_order_event(view: OrderView | None, event: Envelope) -> OrderView | None:
    """Apply one order event to the current view.

    Returns the new view, or ``None`` when the event changes nothing (a
    duplicate of a recently applied event). Raises :class:`ValidationError`
    when the event's data lacks a field its name requires.
    """
    if event.name not in STATUS_BY_EVENT:
        raise ValidationError("name", f"one of {', '.join(sorted(ORDER_EVENTS))}", event.name)
    if view is not None and event.id in view.recentEventIds:
        return None
    data = event.data
    order_id = _str(data, "orderId")
    if view is None:
        view = OrderView(orderId=order_id, status=STATUS_BY_EVENT[event.name])
    changes: dict[str, Any] = {}
    if event.name == "order.placed":
        changes = {
            "customerId": _str(data, "customerId"),
            "items": _list(data, "items"),
            "totalAmount": _number(data, "totalAmount"),
            "currency": _opt_str(data, "currency"),
            "placedAt": event.timestamp,
        }
        if view.eventCount == 0:
            changes["status"] = "pending"
    elif event.name == "order.payment_confirmed":
        changes = {
            "status": "confirmed",
            "paymentId": _str(data, "paymentId"),
            "paidAmount": _number(data, "amount"),
            "confirmedAt": event.timestamp,
        }
    elif event.name == "order.shipped":
        changes = {
            "status": "shipped",
            "trackingNumber": _str(data, "trackingNumber"),
            "carrier": _opt_str(data, "carrier"),
            "shippedAt": event.timestamp,
        }
    else:  # order.cancelled
        changes = {
            "status": "cancelled",
            "cancelReason": _opt_str(data, "reason"),
            "cancelledAt": event.timestamp,
        }
    return replace(
        view,
        **changes,
        updatedAt=event.timestamp,
        lastEventId=event.id,
        recentEventIds=[*view.recentEventIds[-(RECENT_IDS - 1) :], event.id],
        lastEventName=event.name,
        eventCount=view.eventCount + 1,
    )


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

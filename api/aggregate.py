"""Event-sourced aggregates: state rebuilt from events, commands decided against it.

Each decider is a pure function ``(history, command, meta) -> Decision``: it
rebuilds the entity's state from its past events (:func:`rebuild_order`),
refuses a command the state does not allow (:class:`ConflictError`, HTTP 409)
and otherwise returns the new events. The outbox store runs a decider inside
the database transaction that appends its events, so two commands on one
entity can never both decide against the same state.

Order transitions (the statuses are the orders read model's, DESIGN.md):

============================  =====================  ===================
command                       allowed when status is  event
============================  =====================  ===================
place                         (no order yet)          order.placed
confirm payment               pending                 order.payment_confirmed
ship                          confirmed               order.shipped
cancel                        pending, confirmed      order.cancelled
============================  =====================  ===================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.envelope import Envelope, new_event

from .exceptions import ConflictError, InvalidCommandError, NotFoundError

SOURCE = "command-api"

ALLOWED_FROM: dict[str, frozenset[str]] = {
    "order.payment_confirmed": frozenset({"pending"}),
    "order.shipped": frozenset({"confirmed"}),
    "order.cancelled": frozenset({"pending", "confirmed"}),
}
REFUSALS: dict[tuple[str, str], str] = {
    ("order.shipped", "pending"): "it cannot be shipped before its payment is confirmed",
    ("order.payment_confirmed", "confirmed"): "its payment is already confirmed",
    ("order.cancelled", "cancelled"): "it is already cancelled",
    ("order.shipped", "shipped"): "it is already shipped",
    ("order.cancelled", "shipped"): "a shipped order cannot be cancelled",
    ("order.shipped", "cancelled"): "a cancelled order cannot be shipped",
    ("order.payment_confirmed", "cancelled"): "a cancelled order cannot be paid",
}


@dataclass(frozen=True)
class CommandMeta:
    """What every command carries besides its payload."""

    correlation_id: str | None = None
    """Correlation id given by the caller (``X-Correlation-Id``); None: the event's id."""


@dataclass(frozen=True)
class Decision:
    """The outcome of a command that is allowed: events to append, the answer to give."""

    events: list[Envelope]
    """New events, in order, all about the same entity."""
    body: dict[str, Any] = field(default_factory=dict)
    """The JSON answer (the API adds eventId and correlationId)."""


def stream_of(kind: str, entity_id: str) -> str:
    """Event-store stream id of an entity: ``order:o-1``, ``user:u-1``."""
    return f"{kind}:{entity_id}"


STATUS_AFTER = {
    "order.placed": "pending",
    "order.payment_confirmed": "confirmed",
    "order.shipped": "shipped",
    "order.cancelled": "cancelled",
}


@dataclass(frozen=True)
class Order:
    """An order aggregate: what the command side needs to decide transitions."""

    orderId: str
    """Id of the order."""
    status: str
    """pending, confirmed, shipped or cancelled (as in the orders read model)."""
    customerId: str | None = None
    """Who placed it."""
    totalAmount: float | None = None
    """Total as placed; a payment must be for exactly this amount."""
    currency: str | None = None
    """Currency of the total."""
    version: int = 0
    """How many events the order has; the next event is number version + 1."""
    lastEventId: str | None = None
    """Id of the last event, the causation id of the next one."""


def apply(order: Order | None, event: Envelope) -> Order:
    """The order after one more of its events."""
    if event.name not in STATUS_AFTER:
        raise ValueError(f"{event.name} ({event.id}) is not an order event")
    data = event.data
    if order is None:
        order = Order(orderId=data["orderId"], status=STATUS_AFTER[event.name])
    changes: dict[str, Any] = {"status": STATUS_AFTER[event.name]}
    if event.name == "order.placed":
        changes = {
            "status": "pending" if order.version == 0 else order.status,
            "customerId": data.get("customerId"),
            "totalAmount": data.get("totalAmount"),
            "currency": data.get("currency"),
        }
    return replace(order, **changes, version=order.version + 1, lastEventId=event.id)


def rebuild_order(events: Iterable[Envelope]) -> Order | None:
    """An order's state from its events, oldest first; None when there are none.

    Follows the same status rules as the orders read model, so the API checks
    transitions against what readers will see once the events are projected.
    """
    order: Order | None = None
    for event in events:
        order = apply(order, event)
    return order


def _follow(
    history: list[Envelope],
    name: str,
    data: dict[str, Any],
    meta: CommandMeta,
    version: str = "1.0.0",
) -> Envelope:
    return new_event(
        name,
        data,
        version=version,
        source=SOURCE,
        correlation_id=meta.correlation_id,
        causation_id=history[-1].id if history else None,
    )


def _transition(
    history: list[Envelope], order_id: str, name: str, data: dict[str, Any], meta: CommandMeta
) -> Decision:
    order = rebuild_order(history)
    if order is None:
        raise NotFoundError(f"order {order_id!r} not found: place it first with POST /orders")
    if order.status not in ALLOWED_FROM[name]:
        why = REFUSALS.get((name, order.status), f"that is not allowed for a {order.status} order")
        raise ConflictError(f"order {order_id!r} is {order.status}: {why}")
    event = _follow(history, name, {"orderId": order_id, **data}, meta)
    return Decision([event], {"orderId": order_id, "status": apply(order, event).status})


def place_order(history: list[Envelope], data: dict[str, Any], meta: CommandMeta) -> Decision:
    """``order.placed`` for a new order id; 409 when the id is taken."""
    order_id = data["orderId"]
    if history:
        raise ConflictError(f"order {order_id!r} already exists: use a new orderId")
    total = round(sum(i["quantity"] * i["unitPrice"] for i in data["items"]), 2)
    given = data.get("totalAmount")
    if given is not None and abs(given - total) > 0.005:
        raise InvalidCommandError(
            "totalAmount", f"must equal the sum of quantity * unitPrice, {total}", given
        )
    payload = {
        "orderId": order_id,
        "customerId": data["customerId"],
        "items": data["items"],
        "totalAmount": total,
        "currency": data["currency"],
    }
    event = _follow(history, "order.placed", payload, meta)
    return Decision([event], {"orderId": order_id, "status": "pending", "totalAmount": total})


def confirm_payment(history: list[Envelope], data: dict[str, Any], meta: CommandMeta) -> Decision:
    """``order.payment_confirmed`` for a pending order, for exactly its total."""
    order = rebuild_order(history)
    if order is not None and order.status == "pending" and order.totalAmount is not None:
        amount = data.get("amount")
        if amount is None:
            amount = order.totalAmount
        elif abs(amount - order.totalAmount) > 0.005:
            raise InvalidCommandError(
                "amount", f"must equal the order total {order.totalAmount}", amount
            )
        data = {**data, "amount": amount}
    return _transition(history, data["orderId"], "order.payment_confirmed", data, meta)


def ship_order(history: list[Envelope], data: dict[str, Any], meta: CommandMeta) -> Decision:
    """``order.shipped`` for an order whose payment is confirmed."""
    return _transition(history, data["orderId"], "order.shipped", data, meta)


def cancel_order(history: list[Envelope], data: dict[str, Any], meta: CommandMeta) -> Decision:
    """``order.cancelled`` for an order not shipped or cancelled yet."""
    return _transition(history, data["orderId"], "order.cancelled", data, meta)


def create_user(history: list[Envelope], data: dict[str, Any], meta: CommandMeta) -> Decision:
    """``user.created`` for a new user id; 409 when the id is taken."""
    user_id = data["userId"]
    if history:
        raise ConflictError(f"user {user_id!r} already exists: use a new userId")
    payload = {"userId": user_id, "email": data["email"], "name": data["name"]}
    if data.get("address") is None:
        return Decision([_follow(history, "user.created", payload, meta)], {"userId": user_id})
    payload["address"] = data["address"]  # user.created 1.1
    event = _follow(history, "user.created", payload, meta, version="1.1.0")
    return Decision([event], {"userId": user_id})

"""The ``customers`` read model: customerId → profile and order statistics.

Order events are keyed by orderId and payment events carry no customerId, so
the orders projection, which knows each order's customer, emits a *customer
fact* per order change to the ``customer-facts`` topic keyed by customerId,
co-partitioned with ``user-events``. A fact is the order's customer-relevant
state, not a delta: ``{orderId, customerId, version, placedAt, paidAmount}``.
Applying it is an upsert guarded by the order's version, so a replayed or
duplicated fact changes nothing and a stale one never overwrites a newer one.

Stored document: profile fields plus ``orders: {orderId: [version, placedAt,
paidAmount]}``; the served view derives orderCount (orders placed),
totalSpent (sum of confirmed payment amounts) and lastOrderAt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "customers"


def order_fact(view: Mapping[str, Any]) -> dict[str, Any]:
    """The customer fact of an order view (the view must have a customerId)."""
    return {
        "orderId": view["orderId"],
        "customerId": view["customerId"],
        "version": view["eventCount"],
        "placedAt": view["placedAt"],
        "paidAmount": view["paidAmount"],
    }


def fact_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether an order change matters to its customer (placed, paid, customer)."""
    if not new.get("customerId"):
        return False
    if old is None:
        return True
    return (old.get("customerId"), old.get("placedAt"), old.get("paidAmount")) != (
        new["customerId"],
        new["placedAt"],
        new["paidAmount"],
    )


def empty_customer(customer_id: str) -> dict[str, Any]:
    """A customer document before any event about it."""
    return {"customerId": customer_id, "email": None, "name": None, "createdAt": None, "orders": {}}


def apply_user_created(doc: dict[str, Any] | None, event: Envelope) -> dict[str, Any]:
    """Set the profile from ``user.created`` (an upsert: replays change nothing)."""
    data = event.data
    user_id = _str(data, "userId")
    doc = dict(doc) if doc else empty_customer(user_id)
    doc["email"] = _str(data, "email")
    doc["name"] = _str(data, "name")
    doc["createdAt"] = event.timestamp
    return doc


def apply_order_fact(doc: dict[str, Any] | None, fact: dict[str, Any]) -> dict[str, Any] | None:
    """Upsert one order's fact; None when the stored version is as new or newer."""
    customer_id = fact["customerId"]
    doc = doc or empty_customer(customer_id)
    current = doc["orders"].get(fact["orderId"])
    if current is not None and current[0] >= fact["version"]:
        return None
    orders = dict(doc["orders"])
    orders[fact["orderId"]] = [fact["version"], fact["placedAt"], fact["paidAmount"]]
    return {**doc, "orders": orders}


def customer_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The document served by ``GET /customers/{customerId}``."""
    placed = [o[1] for o in doc["orders"].values() if o[1] is not None]
    spent = sum(o[2] for o in doc["orders"].values() if o[2] is not None)
    return {
        "customerId": doc["customerId"],
        "email": doc["email"],
        "name": doc["name"],
        "createdAt": doc["createdAt"],
        "orderCount": len(placed),
        "totalSpent": round(spent, 2),
        "lastOrderAt": max(placed) if placed else None,
    }


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, MISSING)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"data.{key}", "a non-empty string", value)
    return value

"""The ``customers`` read model: customerId → profile and order statistics.

Order events are keyed by orderId and payment events carry no customerId, so
the orders projection, which knows each order's customer, emits a *customer
fact* per order change to the ``customer-facts`` topic keyed by customerId,
co-partitioned with ``user-events``. A fact is the order's customer-relevant
state, not a delta: ``{orderId, customerId, version, placedAt, paidAmount}``.

Stored per customer partition:

- under the customer id, the document: profile fields and the running
  statistics ``orderCount`` (orders placed), ``totalSpent`` (sum of confirmed
  payment amounts) and ``lastOrderAt``, so applying a fact costs the same
  however many orders the customer has;
- under ``\\x00order:<orderId>`` (metadata, not served), the last fact applied
  for the order, ``[version, placedAt, paidAmount]``.

Applying a fact is an upsert guarded by the order's version: the statistics
change by the difference between the new fact and the order's previous one,
so a replayed or duplicated fact changes nothing and a stale one never
overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "customers"

ORDER_PREFIX = b"\x00order:"
"""Key prefix of the per-order entries (the last fact applied per order)."""

OrderEntry = list[Any]
"""``[version, placedAt, paidAmount]`` of the last fact applied for an order."""


def order_key(order_id: str) -> bytes:
    """The store key of an order's entry."""
    return ORDER_PREFIX + order_id.encode()


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
    return {
        "customerId": customer_id,
        "email": None,
        "name": None,
        "createdAt": None,
        "orderCount": 0,
        "totalSpent": 0.0,
        "lastOrderAt": None,
    }


def apply_user_created(doc: dict[str, Any] | None, event: Envelope) -> dict[str, Any]:
    """Set the profile from ``user.created`` (an upsert: replays change nothing)."""
    data = event.data
    user_id = _str(data, "userId")
    doc = dict(doc) if doc else empty_customer(user_id)
    doc["email"] = _str(data, "email")
    doc["name"] = _str(data, "name")
    doc["createdAt"] = event.timestamp
    return doc


def apply_order_fact(
    doc: dict[str, Any] | None, previous: OrderEntry | None, fact: Mapping[str, Any]
) -> tuple[dict[str, Any], OrderEntry] | None:
    """Apply one order's fact to its customer's document.

    ``previous`` is the order's entry (the last fact applied for it), if any.
    Returns the new document and the order's new entry, or None when
    ``previous`` is as new as the fact or newer (a replay or a stale copy).
    """
    if previous is not None and previous[0] >= fact["version"]:
        return None
    placed, paid = fact["placedAt"], fact["paidAmount"]
    old_placed, old_paid = (None, None) if previous is None else (previous[1], previous[2])
    doc = dict(doc) if doc else empty_customer(fact["customerId"])
    doc["orderCount"] += (placed is not None) - (old_placed is not None)
    doc["totalSpent"] += (paid or 0) - (old_paid or 0)
    if placed is not None and (doc["lastOrderAt"] is None or placed > doc["lastOrderAt"]):
        doc["lastOrderAt"] = placed
    return doc, [fact["version"], placed, paid]


def upgrade_document(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, OrderEntry]]:
    """Split a document stored by earlier versions, which kept every order
    inside it (``orders: {orderId: entry}``), into the current document and
    the per-order entries; a current document comes back unchanged."""
    if "orders" not in doc:
        return doc, {}
    entries: dict[str, OrderEntry] = doc["orders"]
    current = {k: v for k, v in doc.items() if k != "orders"}
    placed = [e[1] for e in entries.values() if e[1] is not None]
    current["orderCount"] = len(placed)
    current["totalSpent"] = float(sum(e[2] for e in entries.values() if e[2] is not None))
    current["lastOrderAt"] = max(placed) if placed else None
    return current, entries


def customer_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The document served by ``GET /customers/{customerId}``."""
    doc = upgrade_document(doc)[0]
    return {
        "customerId": doc["customerId"],
        "email": doc["email"],
        "name": doc["name"],
        "createdAt": doc["createdAt"],
        "orderCount": doc["orderCount"],
        "totalSpent": round(doc["totalSpent"], 2) + 0.0,
        "lastOrderAt": doc["lastOrderAt"],
        # True once `eventide forget` destroyed the customer's data keys: the
        # projection then serves the personal fields as null (agents/customers.py).
        "forgotten": False,
    }


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, MISSING)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"data.{key}", "a non-empty string", value)
    return value

"""The ``notifications`` table: which events already caused a notification.

Pure logic of the notification side effect, with no broker, sink or clock in
sight (the projection is ``agents/notifications.py``, the sinks
``streams/sinks.py``):

- :func:`notification_for` turns an event into the notification it causes:
  ``user.created`` → ``welcome``, ``order.placed`` → ``order_confirmation``,
  ``order.shipped`` → ``shipping_notice``; every other event causes none.
- A sent notification is remembered under :func:`dedupe_key` (the entity id
  and the event id), so a redelivered event is never sent twice. The store
  partition of a record is the partition of its source topic, so the entity
  id, the Kafka key of every source topic, keeps the entry next to the
  entity's other events.
- Entries expire after the retention window: each batch that sends appends
  one entry to a per-partition *sent log* (sequence numbered, oldest first),
  and :func:`expire` deletes the keys of log entries older than the window,
  at most ``limit`` keys per call, so the work per batch is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "notifications"

KINDS = {
    "user.created": "welcome",
    "order.placed": "order_confirmation",
    "order.shipped": "shipping_notice",
}
"""Event name → kind of notification it causes."""

SEPARATOR = b"\x1f"
"""Between the entity id and the event id in a dedupe key (ASCII unit separator)."""
LOG_KEY = b"\x00notify:log"
"""Meta key: ``{"head": next sequence to write, "tail": oldest sequence kept}``."""
LOG_ENTRY_PREFIX = b"\x00notify:log:"
"""Meta keys of the sent log: prefix + 16-digit sequence → ``{"at": ms, "keys": [...]}``."""


@dataclass(frozen=True)
class Notification:
    """One message to send, caused by exactly one event."""

    event_id: str
    """Id of the event that caused it: the deduplication and idempotency key."""
    kind: str
    """``welcome``, ``order_confirmation`` or ``shipping_notice``."""
    event_name: str
    """Name of the event that caused it."""
    entity_id: str
    """Id of the entity the event is about (userId or orderId), its Kafka key."""
    recipient: str | None
    """The customer to address; None when the event does not name one
    (``order.shipped`` carries only the orderId: the receiver resolves it)."""
    occurred_at: str
    """Timestamp of the event (ISO-8601 UTC)."""
    correlation_id: str | None
    """Correlation id of the event, for tracing the message back to its flow."""
    data: dict[str, Any] = field(default_factory=dict)
    """What the message says (template variables)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document the sinks deliver (camelCase, like the envelope)."""
        return {
            "eventId": self.event_id,
            "kind": self.kind,
            "eventName": self.event_name,
            "entityId": self.entity_id,
            "recipient": self.recipient,
            "occurredAt": self.occurred_at,
            "correlationId": self.correlation_id,
            "data": self.data,
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as JSON bytes."""
        return orjson.dumps(self.to_dict())


def notification_for(event: Envelope) -> Notification | None:
    """The notification ``event`` causes, or None.

    Raises :class:`ValidationError` naming the field when a notifying event
    lacks the id it is keyed by.
    """
    kind = KINDS.get(event.name)
    if kind is None:
        return None
    data = event.data
    if event.name == "user.created":
        entity = _required(data, "userId")
        recipient: str | None = entity
        body = {"userId": entity, "email": data.get("email"), "name": data.get("name")}
    else:
        entity = _required(data, "orderId")
        recipient = data.get("customerId") if event.name == "order.placed" else None
        if event.name == "order.placed":
            body = {
                "orderId": entity,
                "customerId": recipient,
                "totalAmount": data.get("totalAmount"),
                "currency": data.get("currency"),
                "itemCount": sum(int(i.get("quantity", 0)) for i in data.get("items") or ()),
            }
        else:
            body = {
                "orderId": entity,
                "trackingNumber": data.get("trackingNumber"),
                "carrier": data.get("carrier"),
            }
    return Notification(
        event_id=event.id,
        kind=kind,
        event_name=event.name,
        entity_id=entity,
        recipient=recipient,
        occurred_at=event.timestamp,
        correlation_id=event.correlation_id,
        data=body,
    )


def _required(data: dict[str, Any], name: str) -> str:
    value = data.get(name, MISSING)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"data.{name}", "a non-empty string", value)
    return value


def dedupe_key(notification: Notification) -> bytes:
    """The table key remembering that ``notification`` was sent."""
    return notification.entity_id.encode() + SEPARATOR + notification.event_id.encode()


class TxLike(Protocol):
    """What the retention functions need of a :class:`~tables.store.Transaction`."""

    def get(self, key: bytes) -> Any | None: ...

    def set(self, key: bytes, value: Any, encoded: bytes | None = None) -> None: ...


def _entry_key(seq: int) -> bytes:
    return LOG_ENTRY_PREFIX + b"%016d" % seq


def record_sent(tx: TxLike, keys: list[bytes], now_ms: int) -> None:
    """Remember ``keys`` (dedupe keys) as sent at ``now_ms``, in ``tx``."""
    if not keys:
        return
    for key in keys:
        tx.set(key, now_ms)
    log = tx.get(LOG_KEY) or {"head": 0, "tail": 0}
    tx.set(_entry_key(log["head"]), {"at": now_ms, "keys": [k.decode() for k in keys]})
    tx.set(LOG_KEY, {**log, "head": log["head"] + 1})


def expire(tx: TxLike, now_ms: int, retention_ms: int, limit: int) -> int:
    """Forget sent notifications older than ``retention_ms``, at most ``limit``
    of them; returns how many were forgotten."""
    log = tx.get(LOG_KEY)
    if log is None:
        return 0
    head, tail = log["head"], log["tail"]
    removed = 0
    cutoff = now_ms - retention_ms
    while tail < head and removed < limit:
        entry = tx.get(_entry_key(tail))
        if entry is None:
            tail += 1
            continue
        if entry["at"] > cutoff:
            break
        take, rest = entry["keys"][: limit - removed], entry["keys"][limit - removed :]
        for key in take:
            tx.set(key.encode(), None)
        removed += len(take)
        if rest:
            tx.set(_entry_key(tail), {**entry, "keys": rest})
        else:
            tx.set(_entry_key(tail), None)
            tail += 1
    if tail != log["tail"]:
        tx.set(LOG_KEY, {**log, "tail": tail})
    return removed

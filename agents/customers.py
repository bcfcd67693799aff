"""The customers projection: ``user-events`` + ``customer-facts`` → ``customers``.

Both sources are keyed by customerId and co-partitioned, so partition *p* of
each lands on the same worker and in the same table partition.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.codecs import EventCodec
from schemas.exceptions import DecodeError, ValidationError
from schemas.personal import personal_fields
from streams.catalogue import CUSTOMER_FACTS, USER_EVENTS
from streams.exceptions import RecordKeyError
from streams.projection import BatchContext, Projection, Query, projection
from streams.settings import Settings
from tables.readmodels.customers import (
    TABLE_NAME,
    apply_order_fact,
    apply_user_created,
    customer_view,
    order_key,
    upgrade_document,
)

USER_EVENT_NAMES = frozenset({"user.created"})


@projection(
    TABLE_NAME,
    sources=(USER_EVENTS, CUSTOMER_FACTS),
    query=Query("customers", "customerId"),
)
class CustomersProjection(Projection):
    """customerId → profile and order statistics."""

    def __init__(self, settings: Settings, codec: EventCodec) -> None:
        super().__init__(settings, codec)
        self.users_topic, self.facts_topic = self.sources
        registry = ((e.name, e.payload) for e in codec.registry)
        self.personal = personal_fields(registry).get("user.created", ())
        """The profile fields stored as written (ciphertext) and decrypted when served."""

    def apply(self, ctx: BatchContext, record: Any) -> None:
        if record.topic == self.facts_topic:
            self._apply_fact(ctx, record)
            return
        envelope = self.codec.decode(record.value, record.headers)
        if envelope.name not in USER_EVENT_NAMES:
            raise ValidationError("name", "user.created", envelope.name)
        user_id = envelope.data.get("userId")
        if not isinstance(user_id, str) or not user_id:
            apply_user_created(None, envelope)  # raises, naming the missing field
            return
        key = user_id.encode()
        if record.key != key:  # no key, or another entity's
            raise RecordKeyError(record.key, user_id, "userId")
        doc = apply_user_created(ctx.tx.get(key), envelope)
        ctx.tx.set(key, doc)

    def _apply_fact(self, ctx: BatchContext, record: Any) -> None:
        try:
            fact = orjson.loads(record.value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"customer fact is not valid JSON: {exc}") from exc
        customer_id = fact["customerId"]
        key = customer_id.encode()
        if record.key != key:
            raise RecordKeyError(record.key, customer_id, "customerId")
        entry_key = order_key(fact["orderId"])
        tx = ctx.tx
        doc = tx.get(key)
        if doc is not None and "orders" in doc:  # stored by an earlier version
            doc = self._upgrade(ctx, key, doc)
        applied = apply_order_fact(doc, tx.get(entry_key), fact)
        if applied is not None:
            tx.set(key, applied[0])
            tx.set(entry_key, applied[1])

    @staticmethod
    def _upgrade(ctx: BatchContext, key: bytes, doc: dict[str, Any]) -> dict[str, Any]:
        doc, entries = upgrade_document(doc)
        for order_id, entry in entries.items():
            if ctx.tx.get(order_key(order_id)) is None:
                ctx.tx.set(order_key(order_id), entry)
        ctx.tx.set(key, doc)
        return doc

    def view(self, stored: Any) -> Any:
        """The served profile: personal fields decrypted with the customer's data key;
        ``forgotten: true`` and null personal fields once ``eventide forget`` ran.
        Raises :class:`~schemas.exceptions.DataKeyNotFoundError` (retriable) while
        the key is not read yet."""
        doc = customer_view(stored)
        if self.keys is not None:
            shown, doc["forgotten"] = self.keys.reveal(doc["customerId"], doc, self.personal)
            doc.update(shown)
        return doc

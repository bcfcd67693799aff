"""The orders projection: ``order-events`` → the ``orders`` table.

Per record: decode the envelope, check it is keyed by its orderId (a record
with no key or another key is dead-lettered: :class:`RecordKeyError`), apply it
to the order's view (tables/readmodels/orders.py) and, when the
customer-relevant part changed, emit a customer fact to ``customer-facts``.
The table's changelog is ``order-views``: each batch's changed views are
produced to it once, as the published change stream and as the changelog
that restores the table (keys starting with 0x00 are the engine's metadata).
Bad input raises an EventError, which the engine dead-letters with the reason.
"""

from __future__ import annotations

from typing import Any

from schemas.codecs import EventCodec
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, ORDER_VIEWS
from streams.exceptions import RecordKeyError
from streams.projection import BatchContext, Projection, Query, projection
from streams.settings import Settings
from tables.readmodels.customers import fact_changed, order_fact
from tables.readmodels.orders import TABLE_NAME, apply_order_event


@projection(
    TABLE_NAME,
    sources=(ORDER_EVENTS,),
    outputs=(CUSTOMER_FACTS,),
    query=Query("orders", "orderId"),
    changelog=ORDER_VIEWS,
)
class OrdersProjection(Projection):
    """orderId → order read model."""

    def __init__(self, settings: Settings, codec: EventCodec) -> None:
        super().__init__(settings, codec)
        self.facts_topic = self.outputs[CUSTOMER_FACTS.name]

    def apply(self, ctx: BatchContext, record: Any) -> None:
        envelope = self.codec.decode(record.value, record.headers)
        order_id = envelope.data.get("orderId")
        if not isinstance(order_id, str) or not order_id:
            # let the projection name the missing field
            apply_order_event(None, envelope)
            return
        key = order_id.encode()
        if record.key != key:  # no key, or another entity's: its partition does not own it
            raise RecordKeyError(record.key, order_id, "orderId")
        current = ctx.tx.get(key)
        doc = apply_order_event(current, envelope)
        if doc is None:
            return
        # Encoded once per changed key when the batch is prepared, then produced to
        # order-views (the table's changelog) and written to RocksDB as those bytes.
        ctx.tx.set(key, doc)
        if fact_changed(current, doc):
            fact = order_fact(doc)
            ctx.emit(self.facts_topic, fact["customerId"].encode(), fact, dedupe=key)

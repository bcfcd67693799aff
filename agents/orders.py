"""The orders projection: ``order-events`` → the ``orders`` table.

Per record: decode the envelope, check it is keyed by its orderId, apply it
to the order's view (tables/readmodels/orders.py), and emit the new view to
``order-views`` and, when the customer-relevant part changed, a customer fact
to ``customer-facts``. Bad input raises an EventError, which the engine logs
with topic, partition and offset and skips.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.codecs import EventCodec
from schemas.exceptions import ValidationError
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, ORDER_VIEWS
from streams.projection import BatchContext, Projection, Query, projection
from streams.settings import Settings
from tables.readmodels.customers import fact_changed, order_fact
from tables.readmodels.orders import TABLE_NAME, apply_order_event


@projection(
    TABLE_NAME,
    sources=(ORDER_EVENTS,),
    outputs=(ORDER_VIEWS, CUSTOMER_FACTS),
    query=Query("orders", "orderId"),
)
class OrdersProjection(Projection):
    """orderId → order read model."""

    def __init__(self, settings: Settings, codec: EventCodec) -> None:
        super().__init__(settings, codec)
        self.views_topic = self.outputs[ORDER_VIEWS.name]
        self.facts_topic = self.outputs[CUSTOMER_FACTS.name]

    def apply(self, ctx: BatchContext, record: Any) -> None:
        envelope = self.codec.decode(record.value, record.headers)
        order_id = envelope.data.get("orderId")
        if not isinstance(order_id, str) or not order_id:
            # let the projection name the missing field
            apply_order_event(None, envelope)
            return
        key = order_id.encode()
        if record.key is not None and record.key != key:
            raise ValidationError(
                "key", f'the order id "{order_id}" (events are keyed by orderId)', record.key
            )
        current = ctx.tx.get(key)
        doc = apply_order_event(current, envelope)
        if doc is None:
            return
        encoded = orjson.dumps(doc)
        ctx.tx.set(key, doc, encoded)
        ctx.emit(self.views_topic, key, encoded)
        if fact_changed(current, doc):
            fact = order_fact(doc)
            ctx.emit(self.facts_topic, fact["customerId"].encode(), orjson.dumps(fact), dedupe=key)

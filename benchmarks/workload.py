"""A reproducible order/customer workload and the read models it must produce.

Used by the drain benchmark, the crash test and the crash benchmark: the
same events go to Kafka and through the pure projection functions offline,
and the two results must be equal.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.codecs import CONTENT_TYPE_AVRO, EventCodec
from schemas.envelope import CONTENT_TYPE_JSON, Envelope, new_event
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, key_of
from streams.kafka_clients import aiokafka_options
from streams.outputs import BatchSender, KeyPartitioner
from streams.settings import Settings
from tables.readmodels.customers import apply_user_created, customer_view, empty_customer
from tables.readmodels.orders import apply_order_event

SKUS = [("sku-book", 12.5), ("sku-mug", 8.0), ("sku-lamp", 39.9), ("sku-tea", 4.25)]


@dataclass
class Workload:
    """Events in publication order, per topic."""

    users: list[Envelope]
    """user.created, one per customer."""
    orders: list[Envelope]
    """order.* events, interleaved across orders, each order's own sequence kept;
    includes duplicates (the same event, same id, published again later)."""


def make_workload(
    orders: int,
    customers: int,
    seed: int = 1,
    duplicate_rate: float = 0.02,
    flaky_rate: float = 0.0,
) -> Workload:
    """Lifecycles of ``orders`` orders over ``customers`` customers.

    ``flaky_rate`` of the orders are placed in currency ``FLK``, which the
    worker of benchmarks/flaky_worker.py fails three times before applying.
    """
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    tag = f"{seed:x}"
    users = [
        new_event(
            "user.created",
            {"userId": f"c-{tag}-{c}", "email": f"c{c}@example.com", "name": f"Customer {c}"},
            source="user-service",
            timestamp=base,
        )
        for c in range(customers)
    ]
    flows: list[list[Envelope]] = []
    for n in range(orders):
        order_id = f"o-{tag}-{n}"
        when = base + timedelta(seconds=n)
        lines = [(s, rng.randint(1, 3), p) for s, p in rng.sample(SKUS, rng.randint(1, 3))]
        total = round(sum(q * p for _, q, p in lines), 2)
        placed = new_event(
            "order.placed",
            {
                "orderId": order_id,
                "customerId": f"c-{tag}-{rng.randrange(customers)}",
                "items": [{"sku": s, "quantity": q, "unitPrice": p} for s, q, p in lines],
                "totalAmount": total,
                "currency": "FLK" if rng.random() < flaky_rate else "EUR",
            },
            source="order-service",
            timestamp=when,
        )
        flow = [placed]
        roll = rng.random()
        if roll < 0.1:
            flow.append(_next(flow, "order.cancelled", {"reason": "changed mind"}, when, 60))
        elif roll < 0.9:
            pay = {"paymentId": f"p-{n}", "amount": total}
            flow.append(_next(flow, "order.payment_confirmed", pay, when, 30))
            if rng.random() < 0.8:
                ship = {"trackingNumber": f"T{n:09d}", "carrier": "DHL"}
                flow.append(_next(flow, "order.shipped", ship, when, 3600))
        flows.append(flow)
    events: list[Envelope] = []
    cursor = [0] * len(flows)
    live = list(range(len(flows)))
    while live:
        i = rng.randrange(len(live))
        f = live[i]
        events.append(flows[f][cursor[f]])
        if rng.random() < duplicate_rate:
            events.append(flows[f][cursor[f]])  # a producer retry: same event again
        cursor[f] += 1
        if cursor[f] == len(flows[f]):
            live[i] = live[-1]
            live.pop()
    return Workload(users=users, orders=events)


def _next(
    flow: list[Envelope], name: str, data: dict[str, Any], when: datetime, after: int
) -> Envelope:
    return new_event(
        name,
        {"orderId": flow[0].data["orderId"], **data},
        source="order-service",
        correlation_id=flow[0].correlation_id,
        causation_id=flow[-1].id,
        timestamp=when + timedelta(seconds=after * len(flow)),
    )


def expected_state(work: Workload) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(orders, customers) read models computed offline.

    Orders replay the events through the projection's function; customers are
    derived from the final orders directly (count of placed orders, sum of
    confirmed payments, latest placement), independently of the fact stream
    and of the customers projection's bookkeeping.
    """
    orders: dict[str, Any] = {}
    customers: dict[str, dict[str, Any]] = {}
    for e in work.users:
        customers[e.data["userId"]] = apply_user_created(customers.get(e.data["userId"]), e)
    for e in work.orders:
        order_id = e.data["orderId"]
        new = apply_order_event(orders.get(order_id), e)
        if new is not None:
            orders[order_id] = new
    stats: dict[str, list[Any]] = {}
    for view in orders.values():
        if not view.get("customerId"):
            continue
        placed, paid = view["placedAt"], view["paidAmount"]
        count, spent, last = stats.get(view["customerId"], (0, 0.0, None))
        if placed is not None:
            count += 1
            last = placed if last is None else max(last, placed)
        stats[view["customerId"]] = [count, spent + (paid or 0), last]
    for customer_id, (count, spent, last) in stats.items():
        doc = customers.get(customer_id) or empty_customer(customer_id)
        customers[customer_id] = {
            **doc,
            "orderCount": count,
            "totalSpent": spent,
            "lastOrderAt": last,
        }
    return orders, {k: customer_view(v) for k, v in customers.items()}


async def publish(
    settings: Settings,
    work: Workload,
    form: str = "json",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish the workload (users first) keyed by entity id; returns records sent.

    ``form`` is ``json`` or ``avro`` (Confluent wire format, ids from the registry).
    """
    codec = EventCodec()
    content_type = CONTENT_TYPE_AVRO if form == "avro" else CONTENT_TYPE_JSON
    producer = AIOKafkaProducer(
        **aiokafka_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        partition = KeyPartitioner(settings.partitions)
        for topic, events in (
            (settings.topic(USER_EVENTS.name), work.users),
            (settings.topic(ORDER_EVENTS.name), work.orders),
        ):
            sender = BatchSender(producer)
            for chunk in _chunks(events, 50_000):
                for e in chunk:
                    key = key_of(e).encode()
                    value = codec.encode(e, content_type)
                    headers = codec.headers(e, content_type)
                    await sender.append(topic, partition(key), key, value, headers)
                await sender.flush()
                sent += len(chunk)
                if progress:
                    progress(sent)
    finally:
        await producer.stop()
    return sent


def _chunks(items: list[Envelope], size: int) -> Iterator[list[Envelope]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

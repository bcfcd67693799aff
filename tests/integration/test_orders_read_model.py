"""The orders read model end to end, against the real broker."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventide.tools.demo import DemoPlan, fetch_json, plan_orders, publish_plan
from schemas import new_event
from streams.catalogue import ORDER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event

pytestmark = pytest.mark.integration


def offline_views(plan: DemoPlan) -> dict[str, dict[str, Any]]:
    """The read models computed without Kafka from the same events."""
    views: dict[str, Any] = {}
    for event in plan.events:
        order_id = event.data["orderId"]
        views[order_id] = apply_order_event(views.get(order_id), event) or views.get(order_id)
    return views


def poll_views(
    settings: Settings, expected: dict[str, dict[str, Any]], timeout: float = 60.0
) -> dict[str, Any]:
    """Fetch every order over HTTP until all equal ``expected`` or time runs out."""
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    pending = set(expected)
    while pending and time.monotonic() < deadline:
        for order_id in sorted(pending):
            code, body = fetch_json(f"{settings.web_url}/orders/{order_id}")
            got[order_id] = (code, body)
            if code == 200 and body == expected[order_id]:
                pending.discard(order_id)
        if pending:
            time.sleep(0.3)
    return {k: got[k] for k in pending}


def test_events_become_read_models_served_over_http(make_settings, worker_factory):
    settings = make_settings()
    worker = worker_factory(settings).start()
    plan = plan_orders(120, customers=20, seed=11)
    asyncio.run(publish_plan(settings, plan))

    expected = offline_views(plan)
    assert poll_views(settings, expected) == {}

    code, body = fetch_json(f"{settings.web_url}/orders/no-such-order")
    assert code == 404
    assert body == {"error": "order not found", "orderId": "no-such-order"}
    assert "skipped bad record" not in worker.output()


async def _send_raw(settings: Settings, records: list[tuple[bytes | None, bytes | None]]):
    producer = AIOKafkaProducer(**aiokafka_options(settings))
    await producer.start()
    try:
        topic = settings.topic(ORDER_EVENTS.name)
        return [await producer.send_and_wait(topic, value, key=key) for key, value in records]
    finally:
        await producer.stop()


def unchecked_json(event: Any) -> bytes:
    """The JSON form of ``event`` without the codec's checks: some are invalid on purpose."""
    return orjson.dumps(event.to_dict())


def test_bad_records_are_logged_with_offset_and_skipped(make_settings, worker_factory):
    settings = make_settings()
    worker = worker_factory(settings).start()
    good_placed = new_event(
        "order.placed",
        {"orderId": "o-1", "customerId": "c-1", "items": [], "totalAmount": 5},
    )
    missing_customer = new_event("order.placed", {"orderId": "o-1", "items": [], "totalAmount": 5})
    wrong_key = new_event("order.cancelled", {"orderId": "o-2"})
    paid = new_event("order.payment_confirmed", {"orderId": "o-1", "paymentId": "p", "amount": 5})
    sent = asyncio.run(
        _send_raw(
            settings,
            [
                (b"o-1", b"{not json"),
                (b"o-1", unchecked_json(missing_customer)),
                (b"o-1", None),
                (b"o-1", unchecked_json(good_placed)),
                (b"o-1", unchecked_json(wrong_key)),
                (b"o-1", unchecked_json(paid)),
            ],
        )
    )
    topic = settings.topic(ORDER_EVENTS.name)

    expected = apply_order_event(apply_order_event(None, good_placed), paid)
    assert poll_views(settings, {"o-1": expected}) == {}
    log = worker.output()
    for meta, reason in [
        (sent[0], "DecodeError: value is not valid JSON"),
        (
            sent[1],
            "ValidationError: data.customerId: expected a value (required field), got nothing",
        ),
        (sent[2], "DecodeError: empty record"),
        (sent[4], 'RecordKeyError: key: expected the order id "o-2"'),
    ]:
        assert f"skipped bad record {topic}[{meta.partition}]@{meta.offset}: {reason}" in log
    assert fetch_json(f"{settings.web_url}/orders/o-2")[0] == 404
    assert worker.proc is not None and worker.proc.poll() is None  # still running


async def _committed_and_end_offsets(settings: Settings) -> tuple[dict, dict]:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.projection_group)
    finally:
        await admin.close()
    topic = settings.topic(ORDER_EVENTS.name)
    consumer = AIOKafkaConsumer(**aiokafka_options(settings))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return (
        {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic},
        {tp.partition: off for tp, off in ends.items()},
    )


def test_table_survives_restart_and_loss_of_local_rocksdb(make_settings, worker_factory):
    settings = make_settings()
    first = worker_factory(settings).start()
    plan = plan_orders(80, customers=10, seed=21)
    asyncio.run(publish_plan(settings, plan))
    expected = offline_views(plan)
    assert poll_views(settings, expected) == {}
    assert first.stop() == 0

    # Every source offset is committed: whatever comes back after a restart
    # comes from the table's storage, not from reprocessing order-events.
    committed, ends = asyncio.run(_committed_and_end_offsets(settings))
    assert committed == ends

    # 1. Same data dir: the views come back from the local RocksDB files.
    second = worker_factory(settings).start()
    assert poll_views(settings, expected, timeout=20) == {}
    assert second.stop() == 0

    # 2. Local RocksDB gone: the views are rebuilt from the changelog topic, order-views.
    shutil.rmtree(settings.data_dir)
    third = worker_factory(settings).start()
    assert poll_views(settings, expected, timeout=20) == {}
    assert re.search(r"restored \S*order-views\[\d+\]: [1-9]\d* records", third.output())

"""Retries, dead letters, poison pills and replay, against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from eventide.tools.demo import fetch_json
from eventide.tools.dlq import DeadLetter, read_dead_letters
from schemas import EventCodec, new_event
from streams.catalogue import ORDER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.worker import settings_env

pytestmark = pytest.mark.integration

CODEC = EventCodec()


def placed(order_id: str, currency: str = "EUR") -> Any:
    data = {
        "orderId": order_id,
        "customerId": "c-1",
        "items": [],
        "totalAmount": 5.0,
        "currency": currency,
    }
    return new_event("order.placed", data, source="order-service")


def paid(order_id: str) -> Any:
    return new_event(
        "order.payment_confirmed", {"orderId": order_id, "paymentId": "p", "amount": 5.0}
    )


def shipped(order_id: str) -> Any:
    return new_event("order.shipped", {"orderId": order_id, "trackingNumber": "T1"})


async def _send(settings: Settings, records: list[tuple[bytes, bytes | None, list]]) -> list:
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all")
    await producer.start()
    try:
        topic = settings.topic(ORDER_EVENTS.name)
        return [await producer.send_and_wait(topic, v, key=k, headers=h) for k, v, h in records]
    finally:
        await producer.stop()


def send(settings: Settings, events: list[Any]) -> list:
    return asyncio.run(
        _send(
            settings,
            [(e.data["orderId"].encode(), CODEC.encode_json(e), e.headers()) for e in events],
        )
    )


def wait_for(check, timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"{what} not reached after {timeout:.0f}s")


def order(settings: Settings, order_id: str) -> tuple[int, Any]:
    return fetch_json(f"{settings.web_url}/orders/{order_id}")


def dead_letters(settings: Settings) -> list[DeadLetter]:
    return asyncio.run(read_dead_letters(settings))


def test_transient_failure_is_applied_once_in_order_even_across_kill_9(
    make_settings, worker_factory
):
    settings = make_settings(EVENTIDE_RETRY_BACKOFF_MS="400", EVENTIDE_SESSION_TIMEOUT_MS="6000")
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings, "benchmarks.flaky_worker").start()
    flaky = [placed("o-flk", currency="FLK"), paid("o-flk"), shipped("o-flk")]
    other = [placed("o-ok"), paid("o-ok")]
    send(settings, [flaky[0], other[0], flaky[1], other[1], flaky[2]])
    time.sleep(0.6)  # the flaky event is now between attempts
    worker.kill()
    worker = worker_factory(settings, "benchmarks.flaky_worker").start()

    view = wait_for(
        lambda: (lambda r: r[1] if r[0] == 200 and r[1]["status"] == "shipped" else None)(
            order(settings, "o-flk")
        ),
        what="o-flk shipped",
    )
    # applied exactly once each, in the order they were published
    assert view["recentEventIds"] == [e.id for e in flaky]
    assert view["eventCount"] == 3
    assert order(settings, "o-ok")[1]["status"] == "confirmed"
    assert dead_letters(settings) == []
    assert "retry " in worker.output() or "retry " in "".join(
        p.read_text() for p in worker.log.parent.glob("worker-*.log")
    )


def test_permanent_failure_is_dead_lettered_with_its_story_and_replays_once(
    make_settings, worker_factory
):
    settings = make_settings(
        EVENTIDE_RETRY_BACKOFF_MS="100",
        EVENTIDE_RETRY_BACKOFF_MAX_MS="300",
        EVENTIDE_RETRY_ATTEMPTS="3",
    )
    asyncio.run(ensure_topics(settings))
    flaky_worker = worker_factory(settings, "benchmarks.flaky_worker").start()
    doomed, payment = placed("o-die", currency="DIE"), paid("o-die")
    sent = send(settings, [doomed, payment])

    letters = wait_for(lambda: dead_letters(settings), what="a dead letter")
    assert len(letters) == 1
    d = letters[0]
    topic = settings.topic(ORDER_EVENTS.name)
    assert (d.key, d.value) == (b"o-die", CODEC.encode_json(doomed))
    assert d.original_headers() == doomed.headers()
    assert d.origin_topic == topic
    assert int(d.header("dlq-origin-partition")) == sent[0].partition
    assert int(d.header("dlq-origin-offset")) == sent[0].offset
    assert d.error_class == "RuntimeError"
    assert "rejected the order (permanent)" in d.header("dlq-error-message")
    assert d.header("dlq-attempts") == "3"
    assert int(d.header("dlq-first-failure")) <= int(d.header("dlq-last-failure"))

    # the payment waited behind the doomed event, then went on: a partial view
    view = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(order(settings, "o-die")))
    assert (view["status"], view["eventCount"], view["customerId"]) == ("confirmed", 1, None)

    # fixed handler: replay the dead letter, twice; it is applied once
    flaky_worker.stop()
    worker_factory(settings).start()
    env = {**os.environ, **settings_env(settings)}
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "eventide.cli", "dlq", "replay", "--all"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "replayed 1 record(s)" in out.stdout
    view = wait_for(
        lambda: (lambda r: r[1] if r[1].get("customerId") else None)(order(settings, "o-die"))
    )
    time.sleep(2)  # the second replay has been consumed too
    view = order(settings, "o-die")[1]
    assert view["eventCount"] == 2 and view["recentEventIds"] == [payment.id, doomed.id]


def test_poison_pills_are_dead_lettered_while_the_partition_flows_on(make_settings, worker_factory):
    settings = make_settings(EVENTIDE_MAX_RECORD_BYTES="4096")
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    good = placed("o-p")
    h = good.headers()
    deep = b'{"a":' * 40 + b"1" + b"}" * 40
    bad_items = orjson.loads(CODEC.encode_json(good))
    bad_items["data"]["items"] = [{"sku": "a", "quantity": "three", "unitPrice": 1.0}]
    unknown = orjson.loads(CODEC.encode_json(good))
    unknown["name"] = "order.teleported"
    avro_headers = [(k, b"application/avro" if k == "content-type" else v) for k, v in h]
    pills = [
        (b"o-p", b"{not json", h),
        (b"o-p", orjson.dumps(bad_items), h),
        (b"o-p", b'{"pad":"' + b"x" * 5000 + b'"}', h),
        (b"o-p", deep, h),
        (b"o-p", orjson.dumps(unknown), h),
        (b"o-p", b"\x00\x00\x00\x00\x07garbage", avro_headers),
    ]
    sent = asyncio.run(_send(settings, [*pills, (b"o-p", CODEC.encode_json(good), h)]))
    view = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(order(settings, "o-p")))
    assert view["lastEventId"] == good.id

    letters = wait_for(lambda: (lambda d: d if len(d) >= 6 else None)(dead_letters(settings)))
    assert sorted(int(d.header("dlq-origin-offset")) for d in letters) == [
        m.offset for m in sent[:6]
    ]
    by_offset = {int(d.header("dlq-origin-offset")): d for d in letters}
    messages = [by_offset[m.offset].header("dlq-error-message") for m in sent[:6]]
    assert "not valid JSON" in messages[0]
    assert 'data.items[0].quantity: expected int, got "three"' in messages[1]
    assert "4096" in messages[2]
    assert "EVENTIDE_MAX_JSON_DEPTH" in messages[3]
    assert "order.teleported" in messages[4]
    assert "Avro" in messages[5] or "schema id" in messages[5]
    assert all(d.header("dlq-attempts") == "0" for d in letters)
    assert {d.error_class for d in letters} <= {
        "DecodeError",
        "ValidationError",
        "LimitExceededError",
        "UnknownSchemaError",
        "UnsupportedVersionError",
    }
    assert worker.proc is not None and worker.proc.poll() is None
    assert KeyPartitioner(settings.partitions)(b"o-p") == sent[-1].partition

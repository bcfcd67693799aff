"""Re-keying (issue #15, part 3), against the real broker: events a producer keys by
event id go to an ingest topic; ``eventide bridge kafka --from`` moves them to the
entity-keyed topics, where the worker builds the read models from them. The
bridge is killed (SIGKILL) mid-stream and restarted; invalid records end in the
ingest topic's DLQ with their reason.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.crash import audit
from benchmarks.workload import expected_state, make_workload
from eventide.tools.dlq import read_dead_letters
from schemas.codecs import CONTENT_TYPE_AVRO, CONTENT_TYPE_JSON, EventCodec
from schemas.envelope import Envelope, new_event
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.worker import ChildProcess, settings_env

pytestmark = pytest.mark.integration

INGEST = "orders-raw"


class Bridge(ChildProcess):
    def start(self, settings: Settings) -> Bridge:
        env = {**os.environ, **settings_env(settings)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventide.cli", "bridge", "kafka", "--from", INGEST],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "bridging" not in self.output():
            assert self.proc.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.2)
        return self


async def _publish(settings: Settings, events: list[Envelope], extra=()) -> None:
    """Publish ``events`` to the ingest topic keyed by their event id, half JSON, half Avro."""
    codec = EventCodec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for n, e in enumerate(events):
            form = CONTENT_TYPE_AVRO if n % 2 else CONTENT_TYPE_JSON
            value, headers = codec.encode(e, form), codec.headers(e, form)
            await producer.send(settings.topic(INGEST), value, e.id.encode(), headers=headers)
        for key, value in extra:
            await producer.send(settings.topic(INGEST), value, key)
        await producer.flush()
    finally:
        await producer.stop()


async def _create_ingest(settings: Settings, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic(INGEST), partitions, 1)])
    finally:
        await admin.close()


def _until_equal(settings: Settings, expected: dict, table: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        wrong = audit(settings.web_url, expected, table)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(1)


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[[Settings], Bridge]]:
    """Start bridges; every one still running is killed when the test ends."""
    started: list[Bridge] = []

    def start(settings: Settings) -> Bridge:
        bridge = Bridge(tmp_path / "bridge.log")
        started.append(bridge)
        return bridge.start(settings)

    yield start
    for bridge in started:
        bridge.kill()


def test_events_keyed_by_event_id_reach_the_read_models_through_the_bridge(
    make_settings, worker_factory, start_bridge
):
    settings = make_settings()
    asyncio.run(ensure_topics(settings))
    # One ingest partition: its order is the producer's, so each order's events keep
    # theirs (spread over several ingest partitions, they would have none: README).
    asyncio.run(_create_ingest(settings, partitions=1))
    work = make_workload(orders=200, customers=40, seed=71, duplicate_rate=0.05)
    exp_orders, exp_customers = expected_state(work)
    worker = worker_factory(settings).start()
    bridge = start_bridge(settings)
    events = work.users + work.orders
    half = len(events) // 2
    bad = new_event(
        "order.placed",
        {"orderId": "o-bad", "customerId": "c-x", "items": [], "totalAmount": -1.0},
        source="raw-producer",
    )
    garbage = [(b"k-1", b"not an event"), (bad.id.encode(), orjson.dumps(bad.to_dict()))]
    asyncio.run(_publish(settings, events[:half], extra=garbage))
    time.sleep(1.0)
    bridge.kill()  # mid-stream: what it bridged but did not commit is bridged again
    bridge = start_bridge(settings)
    asyncio.run(_publish(settings, events[half:]))

    assert _until_equal(settings, exp_orders, "orders") == {}
    assert _until_equal(settings, exp_customers, "customers") == {}
    letters = asyncio.run(read_dead_letters(settings, [settings.topic(INGEST) + ".dlq"]))
    reasons = sorted(d.header("dlq-error-class") for d in letters)
    assert reasons == ["DecodeError", "ValidationError"], reasons
    invalid = next(d for d in letters if d.header("dlq-error-class") == "ValidationError")
    assert invalid.header("dlq-error-message").startswith("data.")
    assert invalid.header("dlq-origin-topic") == settings.topic(INGEST)
    bridge.stop()
    worker.stop()
    assert "bridged" in bridge.output()

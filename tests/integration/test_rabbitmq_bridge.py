"""RabbitMQ in (issue #15, part 1), against the real RabbitMQ and Kafka: users and
orders published to a topic exchange (persistent, publisher confirms, routing key
= event name) reach the read models through ``eventide bridge rabbitmq``; the
bridge is killed (SIGKILL) mid-stream and restarted, and nothing is lost or
applied twice; invalid messages end in the dead-letter queue (through the
dead-letter exchange) and in the Kafka DLQ with their reason.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aio_pika
import orjson
import pytest

from benchmarks.crash import audit
from benchmarks.faults.network import TcpProxy
from benchmarks.workload import expected_state, make_workload
from eventide.tools.dlq import read_dead_letters, replay
from schemas.codecs import CONTENT_TYPE_AVRO, CONTENT_TYPE_JSON, EventCodec
from schemas.envelope import Envelope, new_event
from streams.exceptions import BrokerError
from streams.setting_types import SecretUrl
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.broker import free_port
from tests.fixtures.worker import ChildProcess, settings_env
from tests.integration.api.conftest import read_topics

pytestmark = pytest.mark.integration


class Bridge(ChildProcess):
    def start(self, settings: Settings) -> Bridge:
        env = {**os.environ, **settings_env(settings)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventide.cli", "bridge", "rabbitmq"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "bridging RabbitMQ queue" not in self.output():
            assert self.proc.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.2)
        return self


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[[Settings], Bridge]]:
    """Start bridges; every one still running is killed when the test ends."""
    started: list[Bridge] = []

    def start(settings: Settings) -> Bridge:
        bridge = Bridge(tmp_path / f"bridge-{len(started)}.log")
        started.append(bridge)
        return bridge.start(settings)

    yield start
    for bridge in started:
        bridge.kill()


@pytest.fixture
def rabbit_settings(make_settings, rabbitmq) -> Callable[..., Settings]:
    """Settings with an exchange, queues and a dead-letter exchange of the test's own."""

    def make(**overrides: str) -> Settings:
        tag = uuid.uuid4().hex[:8]
        return make_settings(
            EVENTIDE_RABBITMQ_URL=rabbitmq,
            EVENTIDE_RABBITMQ_EXCHANGE=f"events-{tag}",
            EVENTIDE_RABBITMQ_QUEUE=f"eventide-bridge-{tag}",
            EVENTIDE_RABBITMQ_DEAD_LETTER_EXCHANGE=f"events-{tag}.dlx",
            EVENTIDE_RABBITMQ_DEAD_LETTER_QUEUE=f"events-{tag}.dlq",
            EVENTIDE_BRIDGE_METRICS_PORT=str(free_port()),
            **overrides,
        )

    return make


async def publish(settings: Settings, messages: list[tuple[str, bytes, str]]) -> None:
    """Publish (routing key, body, content type) to the exchange as a RabbitMQ
    producer does: persistent messages, each confirmed by the broker."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.rabbitmq_exchange)
        for start in range(0, len(messages), 100):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type=content_type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=str(uuid.uuid4()),
                        ),
                        routing_key=key,
                    )
                    for key, body, content_type in messages[start : start + 100]
                )
            )


def as_messages(events: list[Envelope]) -> list[tuple[str, bytes, str]]:
    """Each event with its name as routing key, half JSON, half Avro."""
    codec = EventCodec()
    forms = (CONTENT_TYPE_JSON, CONTENT_TYPE_AVRO)
    return [(e.name, codec.encode(e, forms[n % 2]), forms[n % 2]) for n, e in enumerate(events)]


async def dead_lettered(settings: Settings, expected: int, timeout: float = 30) -> list:
    """The messages in the dead-letter queue, once ``expected`` are there."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(settings.rabbitmq_dead_letter_queue, durable=True)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            got.append(message)
            await message.ack()
        return got


def _until_equal(settings: Settings, expected: dict, table: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        wrong = audit(settings.web_url, expected, table)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(1)


def _metric(settings: Settings, line_start: str) -> float:
    url = f"http://{settings.api_host}:{settings.bridge_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


def test_events_published_on_rabbitmq_reach_the_read_models_through_the_bridge(
    rabbit_settings, worker_factory, start_bridge
):
    settings = rabbit_settings(EVENTIDE_RABBITMQ_PREFETCH="50")
    asyncio.run(ensure_topics(settings))
    work = make_workload(orders=400, customers=60, seed=73, duplicate_rate=0.05)
    exp_orders, exp_customers = expected_state(work)
    worker = worker_factory(settings).start()
    bridge = start_bridge(settings)  # declares the exchange, the queues and the bindings
    messages = as_messages(work.users + work.orders)
    publisher = threading.Thread(target=lambda: asyncio.run(publish(settings, messages)))
    publisher.start()
    time.sleep(0.4)
    # mid-stream: what it delivered, produced or not, but did not ack is delivered again
    bridge.kill()
    bridge = start_bridge(settings)
    publisher.join()
    bad = new_event(
        "order.placed",
        {"orderId": "o-bad", "customerId": "c-x", "items": [], "totalAmount": -1.0},
        source="rabbit-producer",
    )
    user = work.users[0]
    invalid = [
        ("order.placed", b"not an event", CONTENT_TYPE_JSON),
        ("order.placed", orjson.dumps(bad.to_dict()), CONTENT_TYPE_JSON),
        ("user.renamed", orjson.dumps(user.to_dict()), CONTENT_TYPE_JSON),
    ]
    asyncio.run(publish(settings, invalid))

    assert _until_equal(settings, exp_orders, "orders") == {}
    assert _until_equal(settings, exp_customers, "customers") == {}
    kept = asyncio.run(dead_lettered(settings, expected=3))
    assert sorted(m.routing_key for m in kept) == ["order.placed", "order.placed", "user.renamed"]
    assert sorted(m.body for m in kept) == sorted(body for _, body, _ in invalid)
    letters = asyncio.run(read_dead_letters(settings))  # eventide dlq list: every DLQ topic
    reasons = {
        d.value: (d.header("dlq-error-class"), d.header("dlq-error-message")) for d in letters
    }
    assert sorted(reasons) == sorted(body for _, body, _ in invalid)
    assert reasons[b"not an event"][0] == "DecodeError"
    assert reasons[invalid[1][1]][0] == "ValidationError"
    assert reasons[invalid[1][1]][1].startswith("data.")
    assert reasons[invalid[2][1]][0] == "RoutingKeyError"
    assert "user.renamed" in reasons[invalid[2][1]][1]
    assert {d.topic for d in letters} == {settings.topic("rabbitmq-bridge.dlq")}
    with pytest.raises(BrokerError, match="came from RabbitMQ"):
        asyncio.run(replay(settings, letters))  # no Kafka origin to send them back to
    assert _metric(settings, "eventide_rabbitmq_rejected_total{") == 3
    assert _metric(settings, "eventide_rabbitmq_bridged_total ") > 0
    assert _metric(settings, "eventide_rabbitmq_ack_seconds_count ") > 0
    assert bridge.stop() == 0
    worker.stop()
    assert "bridged" in bridge.output()


def test_several_bridges_share_one_queue(rabbit_settings, start_bridge):
    first = rabbit_settings(EVENTIDE_RABBITMQ_PREFETCH="20")
    second = replace(first, bridge_metrics_port=free_port())
    asyncio.run(ensure_topics(first))
    start_bridge(first)
    start_bridge(second)
    users = make_workload(orders=1, customers=300, seed=5).users
    asyncio.run(publish(first, as_messages(users)))
    deadline = time.monotonic() + 30
    counts = [0, 0]
    while sum(counts) < len(users) and time.monotonic() < deadline:
        time.sleep(0.3)
        counts = [_metric(s, "eventide_rabbitmq_bridged_total ") for s in (first, second)]
    assert sum(counts) == len(users)
    assert all(counts), counts  # each took a share of the queue


def test_an_unreachable_rabbitmq_fails_at_start_up_naming_the_setting(make_settings):
    settings = make_settings(EVENTIDE_RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    proc = subprocess.run(
        [sys.executable, "-m", "eventide.cli", "bridge", "rabbitmq"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "EVENTIDE_RABBITMQ_URL" in proc.stderr
    assert "cannot reach RabbitMQ" in proc.stderr


def event_ids_in_kafka(settings: Settings, wanted: set[str], timeout: float) -> set[str]:
    """The ids of the events on the user and order topics, read again until every
    one of ``wanted`` is there or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {e.id for e in asyncio.run(read_topics(settings))}
        if wanted <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_the_bridge_reconnects_when_its_rabbitmq_connection_drops(rabbit_settings, start_bridge):
    direct = rabbit_settings(EVENTIDE_RABBITMQ_PREFETCH="20")
    proxy = TcpProxy(free_port(), direct.rabbitmq_port).start()
    try:
        url = direct.rabbitmq_url.reveal().replace(f":{direct.rabbitmq_port}", f":{proxy.listen}")
        through_proxy = replace(direct, rabbitmq_url=SecretUrl(url))
        assert through_proxy.rabbitmq_port == proxy.listen
        asyncio.run(ensure_topics(direct))
        bridge = start_bridge(through_proxy)
        users = make_workload(orders=1, customers=200, seed=29).users
        before, after = users[:100], users[100:]
        asyncio.run(publish(direct, as_messages(before)))
        ids = {e.id for e in before}
        assert ids <= event_ids_in_kafka(direct, ids, 30)

        proxy.set_mode("drop")  # the network drops: connection gone, new ones refused
        deadline = time.monotonic() + 30
        while "reconnecting in" not in bridge.output():
            assert bridge.proc.poll() is None, bridge.tail()
            assert time.monotonic() < deadline, bridge.tail()
            time.sleep(0.2)
        asyncio.run(publish(direct, as_messages(after)))  # queued while it is away
        time.sleep(2)  # at least one reconnection attempt fails
        proxy.set_mode("pass")

        ids = {e.id for e in users}
        assert ids <= event_ids_in_kafka(direct, ids, 60)
        assert bridge.proc.poll() is None, bridge.tail()  # still bridging
        log = bridge.output()
        assert "lost the connection to RabbitMQ" in log
        assert "EVENTIDE_RABBITMQ_URL" in log
        assert log.count("bridging RabbitMQ queue") >= 2  # consuming again
        assert bridge.stop() == 0
    finally:
        proxy.close()

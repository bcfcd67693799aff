"""A broker outage: /health says so, the log stays small, nothing is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from streams.catalogue import ORDER_EVENTS
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.broker import start_private
from tests.integration.test_failures import CODEC, order, placed

pytestmark = pytest.mark.integration


class Trickle(threading.Thread):
    """Publishes an order every 0.1 s; one not acknowledged is sent again (same event)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.acked: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, acks="all", request_timeout_ms=3000
        )
        await producer.start()
        topic = self.settings.topic(ORDER_EVENTS.name)
        event = placed(f"o-out-{len(self.acked)}")
        while not self.stopping.is_set():
            try:
                await producer.send_and_wait(
                    topic,
                    CODEC.encode_json(event),
                    key=event.data["orderId"].encode(),
                    headers=event.headers(),
                )
                self.acked.append(event.data["orderId"])
                event = placed(f"o-out-{len(self.acked)}")
            except Exception:
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.1)
        await producer.stop()


class HealthWatch(threading.Thread):
    """Polls /health every 0.3 s: (seconds since start, status code, body)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.url = f"{settings.web_url}/health"
        self.seen: list[tuple[float, int, Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            try:
                code, body = fetch_json(self.url, timeout=2)
            except OSError as exc:
                code, body = 0, str(exc)
            self.seen.append((time.monotonic() - started, code, body))
            time.sleep(0.3)


def test_broker_outage_is_reported_logged_sparingly_and_loses_nothing(
    private_kafka, make_settings, worker_factory
):
    settings = make_settings(
        EVENTIDE_BROKER_URL=private_kafka.broker_url,
        EVENTIDE_METRICS_INTERVAL="1.0",
        EVENTIDE_SESSION_TIMEOUT_MS="6000",
    )
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    trickle, watch = Trickle(settings), HealthWatch(settings)
    trickle.start()
    time.sleep(1.0)
    log_before = worker.log.stat().st_size
    watch.start()

    devbroker.stop(private_kafka)
    down = time.monotonic()
    time.sleep(8.0)
    start_private(private_kafka)  # back once it answers: an outage of ~15-30 s
    outage = time.monotonic() - down
    acked_before = len(trickle.acked)
    log_growth = worker.log.stat().st_size - log_before

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if watch.seen and watch.seen[-1][1] == 200:
            break
        time.sleep(0.3)
    trickle.stopping.set()
    trickle.join(15)
    watch.stopping.set()
    watch.join(5)

    # Degraded, naming the broker, during the outage ("starting" while the group
    # rebalances once the broker is back); ready again after.
    down_bodies = [body for _, code, body in watch.seen if code == 503]
    assert outage > 12 and down_bodies, f"/health never left 200 during a {outage:.0f}s outage"
    assert {b["status"] for b in down_bodies} <= {"degraded", "starting"}, down_bodies
    causes = [c for b in down_bodies for c in b.get("causes", [])]
    assert any(c.startswith("broker unreachable: no answer for") for c in causes), causes
    assert watch.seen[-1][1] == 200 and watch.seen[-1][2]["status"] == "ready"
    assert log_growth < 1_000_000, f"the worker logged {log_growth} bytes in {outage:.0f}s"

    missing = list(trickle.acked)
    deadline = time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        missing = [o for o in missing if order(settings, o)[0] != 200]
        time.sleep(0.3)
    assert acked_before >= 5 and len(trickle.acked) > acked_before and missing == []
    worker.stop()  # before the private broker goes (its fixture is torn down last)

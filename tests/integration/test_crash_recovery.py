"""Effectively-once read models under kill -9, with one worker and with two."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.workload import Workload, expected_state, make_workload, publish
from streams.demo import fetch_json
from streams.settings import Settings
from streams.topics import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS, ensure_topics

pytestmark = pytest.mark.integration


def publish_slowly(
    settings: Settings, work: Workload, chunks: int, pause: float
) -> threading.Thread:
    """Publish the workload in ``chunks`` pieces, ``pause`` seconds apart, in a thread."""
    size = -(-len(work.orders) // chunks)

    def run() -> None:
        asyncio.run(publish(settings, Workload(users=work.users, orders=[])))
        for i in range(0, len(work.orders), size):
            asyncio.run(publish(settings, Workload(users=[], orders=work.orders[i : i + size])))
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _lag(settings: Settings) -> int:
    topics = [settings.topic(t.name) for t in (ORDER_EVENTS, USER_EVENTS, CUSTOMER_FACTS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.projection_group)
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        done = {tp: m.offset for tp, m in committed.items()}
        return sum(end - max(done.get(tp, 0), 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def wait_drained(settings: Settings, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(_lag(settings)) == 0:
            time.sleep(1)  # customer facts emitted by the last batch
            if asyncio.run(_lag(settings)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"not drained after {timeout:.0f}s; lag {asyncio.run(_lag(settings))}")


def served(base_url: str, expected: dict[str, dict[str, Any]], table: str) -> dict[str, Any]:
    """Fetch every key over HTTP; return the ones that differ from ``expected``."""

    def one(key: str) -> tuple[str, Any]:
        for _ in range(20):
            code, body = fetch_json(f"{base_url}/{table}/{key}")
            if code != 503:
                return key, (code, body)
            time.sleep(0.5)
        return key, (code, body)

    with ThreadPoolExecutor(8) as pool:
        got = dict(pool.map(one, sorted(expected)))
    return {k: v for k, v in got.items() if v != (200, expected[k])}


def test_kill_9_during_processing_loses_nothing_and_applies_nothing_twice(
    make_settings, worker_factory
):
    settings = make_settings(EVENTIDE_BATCH_MAX_RECORDS="500", EVENTIDE_SESSION_TIMEOUT_MS="6000")
    work = make_workload(orders=5000, customers=800, seed=31, duplicate_rate=0.05)
    asyncio.run(ensure_topics(settings))
    exp_orders, exp_customers = expected_state(work)
    worker = worker_factory(settings).start()
    publisher = publish_slowly(settings, work, chunks=12, pause=0.8)
    rng = random.Random()
    for _ in range(5):
        time.sleep(rng.uniform(0.3, 1.6))
        worker.kill()
        worker = worker_factory(settings).start()
    publisher.join(120)
    wait_drained(settings)
    assert served(settings.web_url, exp_orders, "orders") == {}
    assert served(settings.web_url, exp_customers, "customers") == {}


def test_two_workers_serve_every_key_and_survive_losing_one(make_settings, worker_factory):
    first = make_settings(EVENTIDE_PARTITIONS="8", EVENTIDE_SESSION_TIMEOUT_MS="6000")
    second = Settings.from_env(
        {
            **_env(first),
            "EVENTIDE_WEB_PORT": str(first.web_port + 1),
            "EVENTIDE_DATA_DIR": str(first.data_dir) + "-b",
        }
    )
    work = make_workload(orders=3000, customers=500, seed=47, duplicate_rate=0.05)
    asyncio.run(ensure_topics(first))
    exp_orders, exp_customers = expected_state(work)
    a = worker_factory(first).start()
    b = worker_factory(second).start()
    publisher = publish_slowly(first, work, chunks=8, pause=0.8)
    time.sleep(random.uniform(1.0, 3.0))
    b.kill()  # the survivor takes b's partitions once b's session times out
    publisher.join(120)
    wait_drained(first)
    assert served(first.web_url, exp_orders, "orders") == {}
    assert served(first.web_url, exp_customers, "customers") == {}

    b = worker_factory(second).start()  # back: partitions split again
    sample = dict(random.Random(3).sample(sorted(exp_orders.items()), 300))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = [fetch_json(f"{s.web_url}/health")[1] for s in (first, second)]
        if all(h.get("partitions") for h in health):
            break
        time.sleep(0.5)
    assert all(h["partitions"] for h in health), health  # both own partitions
    assert served(first.web_url, sample, "orders") == {}
    assert served(second.web_url, sample, "orders") == {}
    a.stop()


def _env(settings: Settings) -> dict[str, str]:
    from tests.fixtures.worker import settings_env

    return settings_env(settings)

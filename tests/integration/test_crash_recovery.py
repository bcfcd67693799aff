"""Effectively-once read models under kill -9, with one worker and with two."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from benchmarks.crash import publish_slowly, wait_drained
from benchmarks.workload import expected_state, make_workload
from eventide.tools.demo import fetch_json
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.audit import assert_read_model
from tests.fixtures.broker import free_port

pytestmark = pytest.mark.integration


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
    assert_read_model(settings.web_url, exp_orders, "orders")
    assert_read_model(settings.web_url, exp_customers, "customers")


def test_two_workers_serve_every_key_and_survive_losing_one(make_settings, worker_factory):
    first = make_settings(EVENTIDE_PARTITIONS="8", EVENTIDE_SESSION_TIMEOUT_MS="6000")
    second = Settings.from_env(
        {
            **_env(first),
            "EVENTIDE_WEB_PORT": str(free_port()),
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
    assert_read_model(first.web_url, exp_orders, "orders")
    assert_read_model(first.web_url, exp_customers, "customers")

    b = worker_factory(second).start()  # back: partitions split again
    sample = dict(random.Random(3).sample(sorted(exp_orders.items()), 300))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = [fetch_json(f"{s.web_url}/health")[1] for s in (first, second)]
        if all(h.get("partitions") for h in health):
            break
        time.sleep(0.5)
    assert all(h["partitions"] for h in health), health  # both own partitions
    assert_read_model(first.web_url, sample, "orders")
    assert_read_model(second.web_url, sample, "orders")
    a.stop()


def _env(settings: Settings) -> dict[str, str]:
    from tests.fixtures.worker import settings_env

    return settings_env(settings)


def test_standby_replica_keeps_a_warm_copy_for_failover(make_settings, worker_factory):
    first = make_settings(
        EVENTIDE_PARTITIONS="4", EVENTIDE_SESSION_TIMEOUT_MS="6000", EVENTIDE_STANDBY_REPLICAS="1"
    )
    second = Settings.from_env(
        {
            **_env(first),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_DATA_DIR": str(first.data_dir) + "-b",
        }
    )
    work = make_workload(orders=3000, customers=400, seed=53, duplicate_rate=0.0)
    asyncio.run(ensure_topics(first))
    exp_orders, exp_customers = expected_state(work)
    a = worker_factory(first).start()
    b = worker_factory(second).start()
    publish_slowly(first, work, chunks=2, pause=0.1).join(60)
    wait_drained(first)

    def health(s: Settings) -> dict:
        return fetch_json(f"{s.web_url}/health")[1]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        health(first)["standbys"] and health(second)["standbys"]
    ):
        time.sleep(0.5)
    ha, hb = health(first), health(second)
    # each worker keeps warm exactly the partitions the other one owns
    assert ha["standbys"] == hb["partitions"] and hb["standbys"] == ha["partitions"]
    time.sleep(2)  # let the standby catch up with the last changelog records

    b.kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(health(first).get("partitions", [])) < 8:
        time.sleep(0.5)
    assert_read_model(first.web_url, exp_orders, "orders")
    assert_read_model(first.web_url, exp_customers, "customers")
    # the takeover replayed only the changelog tail the standby had not yet seen
    restored = [
        int(line.rsplit(": ", 1)[1].split()[0])
        for line in a.output().splitlines()
        if "restored " in line and ("-changelog[" in line or "order-views[" in line)
    ]
    assert sum(restored) < len(exp_orders) // 10, restored

"""``eventide rebuild``: a corrupted read model rebuilt from the events, live."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents import PROJECTIONS, OrdersProjection
from benchmarks.crash import publish_slowly, wait_drained
from benchmarks.workload import Workload, expected_state, make_workload, publish
from eventide.tools.demo import fetch_json
from eventide.tools.rebuild_client import request_json
from schemas.codecs import EventCodec
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, changelog_spec
from streams.engine import ProjectionEngine
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.rebuild import RebuildManager
from streams.settings import Settings
from streams.topics import ensure_topics
from tables.changelog import batch_records
from tables.readmodels.customers import customer_view
from tables.store import PartitionStore
from tests.fixtures.audit import assert_read_model
from tests.fixtures.broker import free_port
from tests.fixtures.worker import settings_env

pytestmark = pytest.mark.integration


def rebuild_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``eventide rebuild ARGS`` as a subprocess, with the settings' environment."""
    return subprocess.run(
        [sys.executable, "-m", "eventide.cli", "rebuild", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def _corrupt(settings: Settings, table: str, docs: dict[str, dict[str, Any]]) -> None:
    """Write ``docs`` straight to the table's changelog, as a buggy writer would:
    per partition, one batch of those documents ended by an offsets record."""
    spec = next(p.spec for p in PROJECTIONS if p.spec.name == table)
    topic = settings.topic(changelog_spec(settings, table, spec.changelog).name)
    partition = KeyPartitioner(settings.partitions)
    batches: dict[int, dict[bytes, bytes | None]] = {}
    for key, doc in docs.items():
        raw = key.encode()
        batches.setdefault(partition(raw), {})[raw] = orjson.dumps(doc)
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all")
    await producer.start()
    try:
        for p, values in batches.items():
            for raw, value in batch_records(values, {}):
                await producer.send_and_wait(topic, value, key=raw, partition=p)
    finally:
        await producer.stop()


async def _retention(settings: Settings, name: str) -> str:
    """The topic's retention.ms (waits until the broker describes a new topic)."""
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        for _ in range(100):
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.topic(name))]
            )
            resource = response.to_object()["resources"][0]
            for entry in resource["config_entries"]:
                if entry["config_names"] == "retention.ms":
                    return str(entry["config_value"])
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise AssertionError(f"{name}: no retention.ms described: {resource}")


def test_rebuild_repairs_a_corrupted_read_model_while_events_flow(make_settings, worker_factory):
    settings = make_settings(EVENTIDE_BATCH_MAX_RECORDS="500")
    work = make_workload(orders=2500, customers=300, seed=61, duplicate_rate=0.03)
    cut = len(work.orders) * 6 // 10
    before = Workload(users=work.users, orders=work.orders[:cut])
    asyncio.run(ensure_topics(settings))
    assert asyncio.run(_retention(settings, ORDER_EVENTS.name)) == "-1"  # history kept

    worker = worker_factory(settings).start()
    asyncio.run(publish(settings, before))
    wait_drained(settings)
    assert worker.stop() == 0

    # A bug wrote wrong documents to the changelogs; the worker loses its local
    # files and recovers them: the read models now serve the bogus values.
    orders_then, _ = expected_state(before)
    rng = random.Random(5)
    bad_orders = {
        k: {**v, "status": "cancelled", "items": [], "totalAmount": 0.0}
        for k, v in rng.sample(sorted(orders_then.items()), 60)
    }
    bad_customers = {
        e.data["userId"]: {
            "customerId": e.data["userId"],
            "email": "lost@example.com",
            "name": "?",
            "createdAt": None,
            "orders": {},
        }
        for e in rng.sample(work.users, 30)
    }
    asyncio.run(_corrupt(settings, "orders", bad_orders))
    asyncio.run(_corrupt(settings, "customers", bad_customers))
    shutil.rmtree(settings.data_dir)
    worker = worker_factory(settings).start()
    assert_read_model(settings.web_url, bad_orders, "orders")
    bogus_views = {k: customer_view(v) for k, v in bad_customers.items()}
    assert_read_model(settings.web_url, bogus_views, "customers")

    # Rebuild both while the rest of the events arrive.
    rest = Workload(users=[], orders=work.orders[cut:])
    publisher = publish_slowly(settings, rest, chunks=8, pause=0.5)
    url = f"{settings.web_url}/admin/rebuild/orders"
    assert request_json("POST", url)[0] == 202
    code, body = request_json("POST", url)
    assert code == 409, body
    assert body["state"] == "running" and "already running" in body["error"]
    run = rebuild_cli(settings, "orders")  # follows it, or rebuilds again once it switched
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rebuild of orders switched on 1 worker(s)" in run.stdout
    run = rebuild_cli(settings, "customers", "--worker", settings.web_url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rebuild of customers switched on 1 worker(s)" in run.stdout
    code, status = request_json("GET", url)
    assert code == 200 and status["state"] == "switched"
    assert status["recordsDone"] == status["recordsTotal"] > 0
    assert status["recordsInvalid"] == status["recordsFailed"] == 0
    assert status["tombstones"] == 0

    publisher.join(120)
    wait_drained(settings)
    exp_orders, exp_customers = expected_state(work)
    assert_read_model(settings.web_url, exp_orders, "orders")
    assert_read_model(settings.web_url, exp_customers, "customers")
    assert "rebuild of orders switched" in worker.output()
    assert worker.stop() == 0

    # The changelogs hold the rebuilt models: a worker without local files gets them.
    shutil.rmtree(settings.data_dir)
    worker = worker_factory(settings).start()
    assert_read_model(settings.web_url, exp_orders, "orders")
    assert_read_model(settings.web_url, exp_customers, "customers")


def test_rebuild_runs_on_every_worker_and_refuses_what_it_cannot_rebuild(
    make_settings, worker_factory
):
    first = make_settings(EVENTIDE_SESSION_TIMEOUT_MS="6000")
    second = Settings.from_env(
        {
            **settings_env(first),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_DATA_DIR": str(first.data_dir) + "-b",
        }
    )
    work = make_workload(orders=600, customers=100, seed=71, duplicate_rate=0.0)
    asyncio.run(ensure_topics(first))
    worker_factory(first).start()
    worker_factory(second).start()
    asyncio.run(publish(first, work))
    wait_drained(first)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        fetch_json(f"{s.web_url}/health")[1].get("partitions") for s in (first, second)
    ):
        time.sleep(0.5)

    run = rebuild_cli(first, "orders")  # finds the other worker through the first
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rebuilding orders on 2 worker(s)" in run.stdout
    assert "rebuild of orders switched on 2 worker(s)" in run.stdout
    done = 0
    for s in (first, second):
        code, status = request_json("GET", f"{s.web_url}/admin/rebuild/orders")
        assert code == 200 and status["state"] == "switched"
        assert status["workers"] == sorted([first.web_url, second.web_url])
        done += status["recordsDone"]
    assert done == len(work.orders)
    exp_orders, _ = expected_state(work)
    assert_read_model(second.web_url, exp_orders, "orders")

    run = rebuild_cli(first, "nope")
    assert run.returncode == 2
    assert "no read model named 'nope'; the read models are: customers, notifications, orders" in (
        run.stderr
    )
    run = rebuild_cli(first, "notifications")
    assert run.returncode == 2
    assert "read model 'notifications' cannot be rebuilt: its table records side effects" in (
        run.stderr
    )
    code, body = request_json("POST", f"{first.web_url}/admin/rebuild/notifications")
    assert code == 400 and "cannot be rebuilt" in body["error"]
    code, body = request_json("GET", f"{first.web_url}/admin/rebuild/nope")
    assert code == 404 and body["table"] == "nope"


async def test_a_rebalance_aborts_a_rebuild_and_leaves_the_live_model_alone(make_settings):
    settings = make_settings()
    await ensure_topics(settings)
    engine = ProjectionEngine(settings, [OrdersProjection(settings, EventCodec())])
    live = PartitionStore(engine.store_path("orders", 0))
    live.write({b"o-1": b'{"orderId": "o-1"}'}, {})
    engine.stores[("orders", 0)] = live
    engine.ready = True
    rebuilds = RebuildManager(engine)
    try:
        async with engine._lock:  # a live batch: the rebuild waits to switch
            rebuild = rebuilds.start("orders")
            shadow = rebuilds.shadow_path("orders", 0)
            for _ in range(200):
                if rebuild.phase == "replaying":
                    break
                await asyncio.sleep(0.05)
            assert rebuild.phase == "replaying" and shadow.exists()
            for listener in engine.rebalance_listeners:  # as on_revoked does
                await listener("rebalance: 4 partitions revoked")
        status = rebuilds.status("orders")
        assert status["state"] == "aborted"
        assert status["reason"] == "rebalance: 4 partitions revoked"
        assert not shadow.exists()
        assert engine.stores[("orders", 0)] is live and live.get(b"o-1") == {"orderId": "o-1"}
    finally:
        live.close()


async def test_an_event_topic_that_deletes_history_is_reported_not_changed(make_settings, caplog):
    settings = make_settings()
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:  # created before Eventide set retention.ms=-1: the broker's 7 days
        await admin.create_topics([NewTopic(settings.topic(ORDER_EVENTS.name), 4, 1)])
        for _ in range(100):  # until the metadata lists it
            if settings.topic(ORDER_EVENTS.name) in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    with caplog.at_level(logging.WARNING, logger="streams.topics"):
        await ensure_topics(settings)
    assert await _retention(settings, ORDER_EVENTS.name) == "604800000"
    assert await _retention(settings, USER_EVENTS.name) == "-1"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert warning.startswith(
        f"topic '{settings.topic(ORDER_EVENTS.name)}' deletes events after "
        "retention.ms=604800000; `eventide rebuild` needs the whole history"
    )

"""A worker that applied a batch but died before committing its offsets.

The stores hold the applied offsets, so a restarted worker seeks past them
and has nothing to fetch; it must still commit those positions, or the group
reports lag forever (and a standby or new owner without the store would redo
the work).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, UnknownMemberIdError
from aiokafka.structs import OffsetAndMetadata

from benchmarks.crash import lag, wait_drained
from benchmarks.workload import expected_state, make_workload, publish
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.audit import assert_read_model

pytestmark = pytest.mark.integration


async def _rewind_group(settings: Settings, timeout: float = 60.0) -> None:
    """Commit offset 0 for every partition, as if no batch had ever been committed.

    A stopped worker's static membership lasts until its session times out;
    until then the broker refuses commits from outside the group.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            await _commit_zero(settings)
            return
        except (CommitFailedError, UnknownMemberIdError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def _commit_zero(settings: Settings) -> None:
    topics = [settings.topic(t.name) for t in (ORDER_EVENTS, USER_EVENTS, CUSTOMER_FACTS)]
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings),
        group_id=settings.projection_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()


def test_applied_but_uncommitted_offsets_are_committed_after_a_restart(
    make_settings, worker_factory
):
    settings = make_settings()
    work = make_workload(orders=400, customers=60, seed=41)
    asyncio.run(ensure_topics(settings))
    asyncio.run(publish(settings, work))
    worker = worker_factory(settings).start()
    wait_drained(settings, timeout=120)
    worker.stop()

    asyncio.run(_rewind_group(settings))
    assert lag(settings) > 0  # the group has forgotten what the stores applied

    worker = worker_factory(settings).start()
    wait_drained(settings, timeout=60)  # committed without any new event arriving
    exp_orders, exp_customers = expected_state(work)
    assert_read_model(settings.web_url, exp_orders, "orders")  # nothing applied twice
    assert_read_model(settings.web_url, exp_customers, "customers")
    worker.stop()

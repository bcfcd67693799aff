"""A batch whose changelog records were cut off by a crash is never restored.

A worker killed while producing a batch's changelog leaves some of its data
records in the changelog without the offsets record that ends the batch (a
*torn* batch): its source offsets were never recorded, so the batch's records
are applied again after the restart. Restoring the torn records as well would
apply those events twice. Seen on the confluent-kafka engine, whose producer
sends a batch's records as they are handed to it: a customer counted an order
twice after `kill -9`.
"""

from __future__ import annotations

import asyncio
import shutil

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.catalogue import ORDER_VIEWS
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.settings import Settings
from streams.topics import ensure_topics
from tables.store import PartitionStore
from tests.integration.test_failures import order, placed, send, wait_for

pytestmark = pytest.mark.integration


async def _produce(settings: Settings, partition: int, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(
                settings.topic(ORDER_VIEWS.name), value, key=key, partition=partition
            )
    finally:
        await producer.stop()


def _same_partition_ids(partitions: int, count: int) -> list[str]:
    partition_of = KeyPartitioner(partitions)
    first = partition_of(b"o-torn-0")
    ids = [f"o-torn-{i}" for i in range(400)]
    return [i for i in ids if partition_of(i.encode()) == first][:count]


def test_a_torn_batch_in_the_changelog_is_not_restored(make_settings, worker_factory):
    settings = make_settings()
    asyncio.run(ensure_topics(settings))
    victim, other, later = _same_partition_ids(settings.partitions, 3)
    partition = KeyPartitioner(settings.partitions)(victim.encode())
    worker = worker_factory(settings).start()
    send(settings, [placed(victim), placed(other)])
    wait_for(lambda: order(settings, other)[0] == 200, what=f"{other} applied")
    truth = order(settings, victim)
    assert truth[0] == 200 and truth[1]["status"] == "pending"
    worker.stop()

    # What a worker killed half-way through producing a batch leaves behind: a
    # changed document (as if one more event had been applied) and no offsets
    # record after it.
    store_dir = settings.data_dir / "tables" / "orders" / str(partition)
    store = PartitionStore(store_dir)
    doc = store.get(victim.encode())
    store.close()
    assert doc is not None
    torn = {**doc, "status": "shipped", "eventCount": doc["eventCount"] + 1}
    asyncio.run(_produce(settings, partition, [(victim.encode(), orjson.dumps(torn))]))

    # 1. The torn batch is the changelog's tail when the worker starts again.
    worker = worker_factory(settings).start()
    assert order(settings, victim) == truth
    assert "unfinished batch" in worker.output()

    # 2. A later batch of the same partition follows the torn records: a store
    #    restored from the first changelog record must still leave them out.
    send(settings, [placed(later)])
    wait_for(lambda: order(settings, later)[0] == 200, what=f"{later} applied")
    assert order(settings, victim) == truth
    worker.stop()
    shutil.rmtree(store_dir)
    worker = worker_factory(settings).start()
    assert order(settings, later)[0] == 200
    assert order(settings, victim) == truth
    worker.stop()

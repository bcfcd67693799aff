"""Restores share one Kafka connection (issue #13: the worker on a SASL_SSL cluster).

An assignment restores every table partition from its changelog inside the
rebalance callback. Each restore used to open a consumer of its own: on a TLS +
SCRAM broker tens of handshakes, 12-22 s on a busy machine, during which aiokafka
sends no heartbeat, so the group expired the worker and assigned again, forever
(docs/benchmarks/security/aiokafka-rebalance-loop.md). Now one reader, started
once, serves every restore of the worker, against the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.assignor import HostAwareRangeAssignor
from streams.transport import KafkaTransport

pytestmark = pytest.mark.integration


async def _restore_many(settings, topic: str, partitions: int) -> tuple[dict[int, list], int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, partitions, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    for p in range(partitions):
        for n in range(p + 1):  # partition p holds p + 1 records
            await producer.send(topic, f"{p}-{n}".encode(), b"k", partition=p)
    await producer.flush()
    await producer.stop()

    started = 0
    real_start = AIOKafkaConsumer.start

    async def counting_start(self: AIOKafkaConsumer) -> None:
        nonlocal started
        started += 1
        await real_start(self)

    AIOKafkaConsumer.start = counting_start
    transport = KafkaTransport(settings, HostAwareRangeAssignor(settings.web_url))
    read: dict[int, list] = {}
    try:
        for p in range(partitions):
            read[p] = [
                r.value for batch in [b async for b in transport.read(topic, p, 0)] for r in batch
            ]
        # a later restore (a rebalance) from an offset inside the partition
        read[-1] = [r.value for b in [b async for b in transport.read(topic, 5, 3)] for r in b]
    finally:
        AIOKafkaConsumer.start = real_start
        await transport.stop()
    return read, started


def test_every_restore_of_a_worker_reads_through_one_connection(make_settings):
    settings = make_settings()
    topic = settings.topic("restore-many")
    read, started = asyncio.run(_restore_many(settings, topic, 12))
    assert started == 1, f"{started} restore consumers started for 12 partitions"
    for p in range(12):
        assert read[p] == [f"{p}-{n}".encode() for n in range(p + 1)]
    assert read[-1] == [b"5-3", b"5-4", b"5-5"]

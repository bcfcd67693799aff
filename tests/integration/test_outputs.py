"""BatchSender against the real broker: records that fill several batches keep their order."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.outputs import BatchSender


async def _send_and_read_back(settings, topic: str, records: int) -> tuple[dict, list]:
    servers = settings.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", enable_idempotence=True, max_batch_size=16 * 1024
    )
    await producer.start()
    try:
        sender = BatchSender(producer)
        for n in range(records):  # ~120 KB per partition: several full batches each
            sender.add(topic, n % 2, f"k{n}".encode(), b"v" * 100, [("n", str(n).encode())])
        last = await sender.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        got: list = []
        while len(got) < records:
            batch = await consumer.getmany(timeout_ms=2000)
            for tp_records in batch.values():
                got += tp_records
    finally:
        await consumer.stop()
    return last, got


def test_full_batches_are_sent_in_order_with_the_last_offsets(make_settings):
    settings = make_settings()
    topic = settings.topic("sender-order")
    last, got = asyncio.run(_send_and_read_back(settings, topic, 2000))
    for partition in (0, 1):
        numbers = [int(dict(r.headers)["n"]) for r in got if r.partition == partition]
        assert numbers == list(range(partition, 2000, 2))  # all, once, in order
    assert last == {(topic, 0): 999, (topic, 1): 999}

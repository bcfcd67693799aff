"""A produce round trip on this broker, with nothing else running: the floor of
each acknowledgement the engine waits for.

    python -m benchmarks.produce_rtt [--broker kafka://127.0.0.1:39092] [--sends 300]

One record at a time (acks=all, idempotent, 200 bytes, ``linger.ms`` 0), each
sent once the previous one is acknowledged, with aiokafka (``send_and_wait``)
and with confluent-kafka (``produce``, then ``poll`` until its delivery
callback). Prints p50/p90/p99 in milliseconds, the first 50 sends left out
(connection and metadata). Inside a worker, the engine waits for two such acks
per batch (outputs, then changelog): compare the step times of a batch with
these (the #12 notes, latency at 1,000 events/s).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

from streams.kafka_clients import aiokafka_options, confluent_options
from streams.settings import Settings

WARM_UP = 50
VALUE = b"x" * 200


def percentiles(samples_ms: list[float]) -> str:
    xs = sorted(samples_ms[WARM_UP:])
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return f"p50 {at(0.5):.2f} ms, p90 {at(0.9):.2f} ms, p99 {at(0.99):.2f} ms"


async def create_topic(settings: Settings, topic: str) -> None:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, settings.replication_factor)])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)  # let the new partition's leader be known


async def aiokafka_rtt(settings: Settings, topic: str, sends: int) -> list[float]:
    producer = AIOKafkaProducer(
        **aiokafka_options(settings), acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    try:
        samples = []
        for _ in range(sends):
            started = time.perf_counter()
            await producer.send_and_wait(topic, VALUE, key=b"k")
            samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        await producer.stop()


def confluent_rtt(settings: Settings, topic: str, sends: int) -> list[float]:
    producer = Producer(
        {**confluent_options(settings), "acks": "all", "enable.idempotence": True, "linger.ms": 0}
    )
    samples = []
    for _ in range(sends):
        done: list[object] = []
        started = time.perf_counter()
        producer.produce(topic, VALUE, key=b"k", on_delivery=lambda err, _msg: done.append(err))  # noqa: B023
        while not done:
            producer.poll(0.0005)
        if done[0] is not None:
            raise SystemExit(f"delivery failed: {done[0]}")
        samples.append((time.perf_counter() - started) * 1000)
    producer.flush(5)
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--sends", type=int, default=300)
    args = ap.parse_args(argv)
    if args.sends <= WARM_UP:
        ap.error(f"--sends must be above the {WARM_UP} warm-up sends")
    settings = Settings.from_env({"EVENTIDE_BROKER_URL": args.broker})
    topic = f"produce-rtt-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(settings, topic))
    aio = percentiles(asyncio.run(aiokafka_rtt(settings, topic, args.sends)))
    print(f"aiokafka send_and_wait:        {aio}")
    print(
        f"confluent-kafka produce + ack: {percentiles(confluent_rtt(settings, topic, args.sends))}"
    )
    print(f"({args.sends - WARM_UP} sends each on {topic}, one at a time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

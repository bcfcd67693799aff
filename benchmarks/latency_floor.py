"""The latency floor: how old records are when a bare consumer gets them.

    python -m benchmarks.latency_floor   # run by benchmarks/latency.py, EVENTIDE_* set

A plain aiokafka group consumer in a process of its own, subscribed to the
topics the worker's engine consumes (the same partitions, the same broker),
with no decode, no state and no output. For each record it notes
``now - record timestamp`` when ``getmany`` hands it over: the part of the
end-to-end latency that the producer, the broker and a consumer's fetch cost on
this machine, whatever the worker does. It prints ``ready`` once it holds its
partitions at their end, records until a line arrives on stdin, then prints
one JSON line: the exact p50/p95/p99 and the ages counted into the worker's
own latency buckets, so both are read the same way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer

from agents import PROJECTIONS
from streams.failures import retry_topic
from streams.kafka_clients import aiokafka_options
from streams.metrics import LATENCY_BUCKETS
from streams.settings import Settings


def engine_topics(settings: Settings) -> list[str]:
    """The topics the worker's projection engine subscribes to: every source of
    the projections ``settings`` runs, and their retry topics."""
    names = settings.projection_names
    sources = {
        settings.topic(t.name)
        for p in PROJECTIONS
        if names is None or p.spec.name in names
        for t in p.spec.sources
    }
    return sorted(sources | {retry_topic(t) for t in sources})


def summarise(ages_s: list[float]) -> dict[str, Any]:
    """Exact percentiles of ``ages_s`` and their counts per latency bucket
    (cumulative, as a Prometheus histogram keeps them)."""
    ages = sorted(ages_s)
    n = len(ages)

    def pct(q: float) -> float | None:
        return ages[min(n - 1, int(q * n))] if n else None

    buckets: dict[float, float] = {}
    i = 0
    for le in (*LATENCY_BUCKETS, float("inf")):
        while i < n and ages[i] <= le:
            i += 1
        buckets[le] = float(i)
    return {"n": n, "p50_s": pct(0.5), "p95_s": pct(0.95), "p99_s": pct(0.99), "buckets": buckets}


async def measure(settings: Settings) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings),
        group_id=f"latency-floor-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    ages: list[float] = []
    try:
        consumer.subscribe(engine_topics(settings))
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        await consumer.seek_to_end()
        print("ready", flush=True)
        stop = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
        while not stop.done():
            batch = await consumer.getmany(timeout_ms=50)
            now_ms = time.time() * 1000
            for records in batch.values():
                ages.extend((now_ms - r.timestamp) / 1000 for r in records)
    finally:
        await consumer.stop()
    return summarise(ages)


def main() -> None:
    settings = Settings.from_env()
    result = asyncio.run(measure(settings))
    result["buckets"] = [[le, count] for le, count in result["buckets"].items()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

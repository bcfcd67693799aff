"""The engine's own CPU per event, with the broker stubbed out.

    python -m benchmarks.enginepath                    # 50k orders, Avro, 8 partitions
    python -m benchmarks.enginepath --profile out.txt  # and a cProfile of the batch path
    python -m benchmarks.enginepath --plaintext        # user.created without encrypted fields

Runs the orders and customers projections of one worker through
:class:`~streams.engine.ProjectionEngine` over an in-memory log: the workload's
events (Avro, keyed, partitioned as producers do) in batches of
``--batch`` records, then the customer facts the orders projection emitted.
What is measured is the process's CPU time in ``process`` and
``complete_pending`` (decode, projections, transactions, changelog records,
RocksDB writes), without any Kafka client: the part of a worker's cost that
is Eventide's own. A profile says where that time goes. The ``user.created``
events carry their personal fields encrypted, as the command API writes them
(one data key per customer, made before the measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from aiokafka import TopicPartition

from agents.customers import CustomersProjection
from agents.orders import OrdersProjection
from schemas.codecs import CONTENT_TYPE_AVRO, EventCodec
from schemas.personal import DataKey
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS, key_of
from streams.confluent_consumer import Record
from streams.engine import ProjectionEngine
from streams.keys import PersonalFields
from streams.outputs import KeyPartitioner
from streams.settings import Settings

from .workload import make_workload


class _Acks:
    def __init__(self, last: dict[tuple[str, int], int]) -> None:
        self.last = last

    async def acknowledged(self) -> dict[tuple[str, int], int]:
        return self.last


class MemoryLog:
    """Topic partitions as lists; the sender appends, offsets count from 0."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[tuple[Any, Any, Any]]] = {}
        self.records = 0
        self._last: dict[tuple[str, int], int] = {}

    def add(self, topic, partition, key, value, headers=()) -> None:
        log = self.logs.get((topic, partition))
        if log is None:
            log = self.logs[(topic, partition)] = []
        log.append((key, value, headers))
        self._last[(topic, partition)] = len(log) - 1
        self.records += 1

    def records_of(self, topic: str, partition: int) -> list[Record]:
        return [
            Record(topic, partition, offset, kvh[0], kvh[1], kvh[2], 0)
            for offset, kvh in enumerate(self.logs.get((topic, partition), []))
        ]

    async def append(self, topic, partition, key, value, headers=()) -> None:
        self.add(topic, partition, key, value, headers)

    async def submit(self) -> _Acks:
        last, self._last = self._last, {}
        return _Acks(last)

    async def flush(self) -> dict[tuple[str, int], int]:
        return await (await self.submit()).acknowledged()


class _Consumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    async def committed(self, partition: TopicPartition) -> int | None:
        return None

    def seek(self, partition: TopicPartition, offset: int) -> None:
        return None


class MemoryTransport:
    def __init__(self, log: MemoryLog) -> None:
        self.sender = log
        self.consumer = _Consumer()

    async def start(self, topics, listener) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self, topic: str, partition: int, start: int) -> AsyncIterator[list[Record]]:
        if False:  # pragma: no cover - nothing to restore in a fresh data dir
            yield []


def batches(
    log: MemoryLog, topics: Sequence[str], partitions: int, size: int
) -> list[dict[TopicPartition, list[Record]]]:
    """The topics' records as a consumer would fetch them: ``size`` records per
    batch, taken round-robin from the partitions, in offset order."""
    cursors = {(t, p): 0 for t in topics for p in range(partitions)}
    records = {tp: log.records_of(*tp) for tp in cursors}
    out: list[dict[TopicPartition, list[Record]]] = []
    per_partition = max(1, size // len(cursors))
    while True:
        batch: dict[TopicPartition, list[Record]] = {}
        for (t, p), at in cursors.items():
            chunk = records[(t, p)][at : at + per_partition]
            if chunk:
                batch[TopicPartition(t, p)] = chunk
                cursors[(t, p)] = at + len(chunk)
        if not batch:
            return out
        out.append(batch)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = make_workload(args.orders, args.customers, seed=1)
    codec = EventCodec()
    if not args.plaintext:
        personal = PersonalFields(codec.registry)
        work.users = [
            replace(e, data=personal.encrypt(DataKey.generate(key_of(e)), e.name, e.data))
            for e in work.users
        ]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "EVENTIDE_DATA_DIR": str(Path(tmp) / "data"),
                "EVENTIDE_PARTITIONS": str(args.partitions),
            }
        )
        partition = KeyPartitioner(settings.partitions)
        source = MemoryLog()
        for topic, stream in ((USER_EVENTS, work.users), (ORDER_EVENTS, work.orders)):
            name = settings.topic(topic.name)
            for e in stream:
                key = key_of(e).encode()
                value = codec.encode(e, CONTENT_TYPE_AVRO)
                source.add(name, partition(key), key, value, codec.headers(e, CONTENT_TYPE_AVRO))
        out = MemoryLog()
        projections = [
            OrdersProjection(settings, EventCodec()),
            CustomersProjection(settings, EventCodec()),
        ]
        engine = ProjectionEngine(settings, projections, transport=cast(Any, MemoryTransport(out)))
        tps = [TopicPartition(t, p) for t in engine.by_topic for p in range(args.partitions)]
        engine.transport.consumer.assigned = set(tps)  # type: ignore[union-attr]
        await engine.on_assigned(tps)
        sources = [settings.topic(USER_EVENTS.name), settings.topic(ORDER_EVENTS.name)]
        first = batches(source, sources, args.partitions, args.batch)
        profiler = cProfile.Profile() if args.profile else None
        events = sum(len(r) for b in first for r in b.values())
        # The pre-built workload is not the worker's: keep it out of the collector's sight.
        gc.collect()
        gc.freeze()
        cpu = time.process_time()
        if profiler:
            profiler.enable()
        for batch in first:
            await engine.process(batch)
        await engine.complete_pending()
        cpu = time.process_time() - cpu
        facts = batches(out, [settings.topic(CUSTOMER_FACTS.name)], args.partitions, args.batch)
        resumed = time.process_time()
        for batch in facts:
            await engine.process(batch)
        await engine.complete_pending()
        if profiler:
            profiler.disable()
        cpu += time.process_time() - resumed
        fact_records = sum(len(r) for b in facts for r in b.values())
        produced = out.records
        await engine.stop()
        if profiler:
            stats = pstats.Stats(profiler)
            with open(args.profile, "w") as fh:
                stats.stream = fh  # type: ignore[attr-defined]
                stats.sort_stats("tottime").print_stats(45)
                stats.sort_stats("cumulative").print_stats(45)
    return {
        "source events": events,
        "customer facts": fact_records,
        "records produced": produced,
        "produced per source event": round(produced / events, 2),
        "CPU s": round(cpu, 2),
        "CPU µs per source event": round(cpu / events * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=50_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch", type=int, default=5000, help="records per batch")
    ap.add_argument("--profile", help="write a cProfile report of the batch path here")
    ap.add_argument(
        "--plaintext", action="store_true", help="personal fields in clear (older producers)"
    )
    args = ap.parse_args()
    for k, v in asyncio.run(run(args)).items():
        print(f"{k:>28}: {v:,}" if isinstance(v, int) else f"{k:>28}: {v}")


if __name__ == "__main__":
    main()

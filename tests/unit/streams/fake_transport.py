"""An in-memory Kafka for driving the engine's batch path without a broker.

:class:`FakeBroker` keeps one log per (topic, partition); :class:`FakeTransport`
gives the engine a consumer, a batching sender that appends to those logs, and a
changelog reader over them. Two engines built over one broker and one data
directory behave like a worker and its restart after ``kill -9``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition


@dataclass
class Record:
    """A consumed record: what the engine and the projections read of one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0


class FakeBroker:
    """Logs per (topic, partition), and the group's committed offsets."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[Record]] = {}
        self.committed: dict[TopicPartition, int] = {}

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Record:
        log = self.logs.setdefault((topic, partition), [])
        record = Record(topic, partition, len(log), key, value, list(headers))
        log.append(record)
        return record

    def log(self, topic: str, partition: int = 0) -> list[Record]:
        return self.logs.get((topic, partition), [])


class FakeAcks:
    def __init__(self, last: dict[tuple[str, int], int]) -> None:
        self.last = last

    async def acknowledged(self) -> dict[tuple[str, int], int]:
        return self.last


class FakeSender:
    """Collects records and writes them to the broker on submit, in order."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.pending: list[tuple[str, int, bytes | None, bytes | None, list[Any]]] = []

    def add(self, topic, partition, key, value, headers=()) -> None:  # type: ignore[no-untyped-def]
        self.pending.append((topic, partition, key, value, list(headers)))

    async def append(self, topic, partition, key, value, headers=()) -> None:  # type: ignore[no-untyped-def]
        self.add(topic, partition, key, value, headers)

    async def submit(self) -> FakeAcks:
        last: dict[tuple[str, int], int] = {}
        pending, self.pending = self.pending, []
        for topic, partition, key, value, headers in pending:
            last[(topic, partition)] = self.broker.append(
                topic, partition, key, value, headers
            ).offset
        return FakeAcks(last)

    async def flush(self) -> dict[tuple[str, int], int]:
        return await (await self.submit()).acknowledged()


class FakeConsumer:
    """The group consumer: commits go to the broker; seeks and pauses are recorded."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records=None):  # type: ignore[no-untyped-def]
        return {}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.broker.committed.update(offsets)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.broker.committed.get(partition)


class FakeTransport:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.consumer = FakeConsumer(broker)
        self.sender = FakeSender(broker)

    async def start(self, topics, listener) -> None:  # type: ignore[no-untyped-def]
        return None

    async def stop(self) -> None:
        return None

    async def read(self, topic: str, partition: int, start: int) -> AsyncIterator[list[Record]]:
        records = self.broker.log(topic, partition)[start:]
        if records:
            yield records

"""Batched produce: records are appended to per-partition batches, sent together.

``aiokafka``'s ``send()`` costs tens of microseconds per record; appending to
a ``BatchBuilder`` and sending whole batches costs a few. :class:`BatchSender`
collects one flush's records per (topic, partition), in order (``add`` is
synchronous: no coroutine per record), and :meth:`BatchSender.flush` sends them
and waits for every acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


class KeyPartitioner:
    """Kafka's default partitioner (murmur2 of the key bytes), memoised per key."""

    def __init__(self, partitions: int, cache_size: int = 200_000) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}
        self._cache_size = cache_size

    def __call__(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            partition = (murmur2(key) & 0x7FFFFFFF) % self.partitions
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = partition
        return partition


class BatchSender:
    """Collects records per (topic, partition) and sends them as whole batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._builders: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[tuple[str, int], Any]] = []
        """Full batches not yet handed to the producer, in the order they filled."""
        self._pending: list[asyncio.Future[Any]] = []
        self._last: dict[tuple[str, int], tuple[asyncio.Future[Any], int]] = {}
        self.records = 0

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Add a record (no I/O: a full batch waits for :meth:`submit`, in order)."""
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self._producer.create_batch()
        hdrs = headers if type(headers) is list else list(headers)
        if builder.append(key=key, value=value, timestamp=None, headers=hdrs) is None:
            self._full.append((tp, builder))
            builder = self._builders[tp] = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=hdrs) is None:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds max_batch_size")
        self.records += 1

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Add a record; a full batch is handed to the producer at once."""
        self.add(topic, partition, key, value, headers)
        if self._full:
            await self._submit_full()

    async def _submit_full(self) -> None:
        full, self._full = self._full, []
        for tp, builder in full:
            await self._submit(tp, builder)

    async def _submit(self, tp: tuple[str, int], builder: Any) -> None:
        count = builder.record_count()
        future = await self._producer.send_batch(builder, tp[0], partition=tp[1])
        self._pending.append(future)
        self._last[tp] = (future, count)

    async def submit(self) -> Submitted:
        """Hand everything collected to the producer; the acknowledgements come later."""
        await self._submit_full()
        for tp, builder in self._builders.items():
            if builder.record_count():
                await self._submit(tp, builder)
        self._builders.clear()
        submitted = Submitted(self._pending, self._last)
        self._pending = []
        self._last = {}
        self.records = 0
        return submitted

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send everything collected; return the offset of the last record per partition."""
        return await (await self.submit()).acknowledged()


class Submitted:
    """Records handed to the producer, in order per partition, awaiting their acks."""

    def __init__(
        self,
        futures: list[asyncio.Future[Any]],
        last: dict[tuple[str, int], tuple[asyncio.Future[Any], int]],
    ) -> None:
        self._futures = futures
        self._last = last

    async def acknowledged(self) -> dict[tuple[str, int], int]:
        """Wait for every ack; return the offset of the last record per partition."""
        if self._futures:
            await asyncio.gather(*self._futures)
        return {tp: fut.result().offset + count - 1 for tp, (fut, count) in self._last.items()}

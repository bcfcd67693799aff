"""A clock for projections whose state has deadlines (the order saga).

The engine applies records, nothing else: a deadline is noticed when a record
arrives. :class:`Ticker` writes one small record per interval to every
partition of a tick topic that this worker's engine owns, ``{"now": <ms>}``;
the projection applies it like any record (its time is in the record, so a
replayed tick decides the same) and runs what is due. A partition moved to
another worker is ticked by its new owner from its first assignment.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from .engine import ProjectionEngine

logger = logging.getLogger(__name__)

TICK_KEY = b"tick"


class Ticker:
    """Writes ``{"now": ms}`` to each owned partition of ``topic`` every ``interval_ms``."""

    def __init__(self, engine: ProjectionEngine, topic: str, interval_ms: int) -> None:
        self.engine = engine
        self.topic = topic
        self.interval = interval_ms / 1000

    def owned(self) -> list[int]:
        """Partitions of the tick topic assigned to this worker (none while not ready)."""
        consumer = self.engine.consumer
        if consumer is None or not self.engine.ready:
            return []
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic)

    async def tick(self) -> int:
        """Write one tick to each owned partition; return how many were written."""
        partitions = self.owned()
        if not partitions:
            return 0
        sender = self.engine.transport.sender
        if sender is None:
            return 0
        value = orjson.dumps({"now": int(time.time() * 1000)})
        async with self.engine.pipeline.send_lock:
            for partition in partitions:
                sender.add(self.topic, partition, TICK_KEY, value)
            acks = await sender.submit()
        await acks.acknowledged()
        return len(partitions)

    async def run(self) -> None:
        """Tick until cancelled; a failed tick is logged and the next one tried."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:  # the broker is away: the next tick tries again
                logger.warning("saga tick to %s failed: %s", self.topic, exc)

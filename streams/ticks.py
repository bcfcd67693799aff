"""A clock for projections whose state has deadlines (the order saga).

The engine applies records, nothing else: a deadline is noticed when a record
arrives. :class:`Ticker` writes one small record per interval, key
:data:`TICK_KEY`, value ``{"now": <ms>}``, to every partition this worker's
engine owns of a topic the projection consumes. The projection applies it like
any record and runs what is due. The tick goes to the topic the answers come
on (``saga-replies``), not a topic of its own: within a partition the log
orders ticks and replies, so a reply written before the deadline's tick is
applied before it, after a restart too, and a replayed batch decides the same.
A partition moved to another worker is ticked by its new owner.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from .catalogue import TICK_KEY
from .engine import ProjectionEngine

logger = logging.getLogger(__name__)


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

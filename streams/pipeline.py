"""Batches in flight: steps 4 to 6 of each batch, chained in batch order.

The engine applies a batch and hands its outputs to the producer in its own
loop (steps 1 to 3, :mod:`streams.checkpoint`), then gives the batch to a
:class:`BatchPipeline`, which runs the rest in a task per batch:

    outputs acknowledged → changelog produced, after the previous batch's →
    changelog acknowledged → stores written, after the previous batch's →
    offsets handed to the background committer

so changelogs reach each partition, and transactions reach RocksDB, in the
order the batches were applied, while the loop already fetches and applies
the next batch. Up to ``depth`` batches are in flight; each reads the changes
of those before it through its transactions' parents. A failure fails its
batch and, through the chain, every later one (they read its changes); the
engine raises it at its next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from .checkpoint import BatchCommit
from .transport import RecordSender

if TYPE_CHECKING:
    from .metrics import EngineMetrics

Committer = Callable[[dict[TopicPartition, int]], Awaitable[None]]


class InFlight:
    """A batch applied but not yet complete, and the milestones of its task."""

    __slots__ = ("commit", "sent", "task")

    def __init__(self, commit: BatchCommit, sent: asyncio.Future[None]) -> None:
        self.commit = commit
        self.sent = sent
        """Done once the batch's changelog is handed to the producer."""
        self.task: asyncio.Future[None] = sent
        """The batch's task (set at once): done once the batch is in RocksDB, or failed."""


class BatchPipeline:
    """The batches in flight, oldest first."""

    def __init__(self, metrics: EngineMetrics, commit: Committer, depth: int) -> None:
        self.metrics = metrics
        self.commit = commit
        """Hands a complete batch's offsets to the engine's background committer."""
        self.depth = depth
        """Most batches in flight before :meth:`add` waits for the oldest."""
        self.send_lock = asyncio.Lock()
        """One batch's records at a time in the sender (add ... submit)."""
        self._inflight: deque[InFlight] = deque()

    def __len__(self) -> int:
        return len(self._inflight)

    @property
    def last(self) -> BatchCommit | None:
        """The newest batch in flight: the parent of the next one."""
        return self._inflight[-1].commit if self._inflight else None

    def reap(self) -> None:
        """Drop complete batches from the front; raise the first failure."""
        inflight = self._inflight
        while inflight and inflight[0].task.done():
            inflight.popleft().task.result()

    async def add(self, commit: BatchCommit, sender: RecordSender) -> None:
        """Finish ``commit`` (outputs handed to ``sender`` already) after the batches
        in flight; wait for the oldest while more than ``depth`` are in flight."""
        previous = self._inflight[-1] if self._inflight else None
        entry = InFlight(commit, asyncio.get_running_loop().create_future())
        entry.task = asyncio.ensure_future(self._finish(entry, previous, sender))
        self._inflight.append(entry)
        while len(self._inflight) > self.depth:
            await self._complete_oldest()

    async def complete(self) -> None:
        """Wait until every batch in flight is in RocksDB; raise the first failure."""
        while self._inflight:
            await self._complete_oldest()

    def cancel(self) -> None:
        """Drop the batches in flight (the engine is stopping)."""
        for entry in self._inflight:
            entry.task.cancel()
        self._inflight.clear()

    async def _complete_oldest(self) -> None:
        entry = self._inflight[0]
        try:
            await asyncio.shield(entry.task)
        finally:
            if entry.task.done() and self._inflight and self._inflight[0] is entry:
                self._inflight.popleft()

    async def _finish(
        self, entry: InFlight, previous: InFlight | None, sender: RecordSender
    ) -> None:
        """Steps 4 to 6 of one batch, after those of the batch before it."""
        commit = entry.commit
        try:
            await commit.outputs_acknowledged()
            if previous is not None:
                await asyncio.shield(previous.sent)
            async with self.send_lock:
                await commit.produce_changelog(sender)
            entry.sent.set_result(None)
            await commit.acknowledged()
            if previous is not None:
                await asyncio.shield(previous.task)
            await commit.write_stores()
        except BaseException as exc:
            commit.fail()
            if not entry.sent.done():
                entry.sent.set_exception(exc)
                entry.sent.exception()  # retrieved: the next batch raises it
            raise
        self.metrics.batch_committed(commit)
        await commit.commit_offsets(self.commit)

"""One batch's way from ``getmany`` to the offset commit: :class:`BatchCommit`.

Its methods are the steps, called in this order by the engine
(streams/engine.py):

1. :meth:`BatchCommit.apply`: hand each record to every projection its topic
   feeds, in offset order per partition, skipping what the partition's store
   has applied and holding retry records that are not due yet;
2. :meth:`BatchCommit.run_side_effects`: the projections' ``after_batch``;
3. :meth:`BatchCommit.produce_outputs`: downstream, retry and dead-letter records;
4. :meth:`BatchCommit.produce_changelog`: once the outputs are acknowledged,
   prepare every transaction and send its changelog records and offsets record;
5. :meth:`BatchCommit.write_stores`: once the changelog is acknowledged, flush
   every transaction to RocksDB (data, source offsets and changelog offset in
   one ``WriteBatch``);
6. :meth:`BatchCommit.commit_offsets`: commit the consumer offsets.

Outputs are acknowledged before the changelog is sent: a batch the changelog
marks as done never lacks its outputs. The engine pipelines one batch deep:
steps 5 and 6 of batch *n* run after step 3 of batch *n+1*, whose
transactions read batch *n*'s changes through their parent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from tables.transaction import Transaction

from .failures import Outcome
from .projection import BatchContext, Projection
from .transport import Acks, RecordSender

if TYPE_CHECKING:
    from .engine import ProjectionEngine

Batch = Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]


class BatchCommit:
    """The steps of committing one batch, and what the batch changed."""

    def __init__(self, engine: ProjectionEngine, parent: BatchCommit | None = None) -> None:
        self.engine = engine
        self.parent = parent
        """The previous batch, produced but not yet written to RocksDB."""
        self.contexts: dict[tuple[str, int], BatchContext] = {}
        """(table, partition) → the batch's context and transaction there."""
        self.commits: dict[TopicPartition, int] = {}
        """Source partition → next offset to commit."""
        self.holds: list[tuple[TopicPartition, ConsumerRecord[Any, Any]]] = []
        """Retry partitions to pause at a record that is not due yet."""
        self.started = time.perf_counter()
        self._outputs: Acks | None = None
        self._changelog: Acks | None = None

    # -- 1. apply ------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Apply every record of ``batch`` through the projections its topic feeds."""
        engine = self.engine
        engine.router.begin_batch()
        for tp, records in batch.items():
            for projection in engine.by_topic[tp.topic]:
                ctx = self._context(projection.table, tp.partition)
                if ctx is not None:
                    self._apply_partition(projection, ctx, tp, records)
        self._commit_floor()

    def _context(self, table: str, partition: int) -> BatchContext | None:
        """The batch's context of a table partition (None once revoked)."""
        key = (table, partition)
        ctx = self.contexts.get(key)
        if ctx is None:
            store = self.engine.stores.get(key)
            if store is None:
                return None
            ctx = self.contexts[key] = BatchContext(Transaction(store, self._parent_tx(key)))
        return ctx

    def _parent_tx(self, key: tuple[str, int]) -> Transaction | None:
        """The transaction of the newest batch in flight that touched ``key``'s
        partition (batches in between may not have); None if the store has all."""
        commit = self.parent
        while commit is not None:
            ctx = commit.contexts.get(key)
            if ctx is not None:
                return ctx.tx
            commit = commit.parent
        return None

    def _apply_partition(
        self,
        projection: Projection,
        ctx: BatchContext,
        tp: TopicPartition,
        records: list[ConsumerRecord[Any, Any]],
    ) -> None:
        """Apply one partition's records in offset order; count their outcomes."""
        engine = self.engine
        applied = ctx.tx.store.offset(tp.topic)
        from_retry = tp.topic in engine.retry_topics
        handle = engine.router.handle
        skipped = invalid = done = 0  # done: records handled (a held retry stops the loop)
        for record in records:
            if record.offset <= applied:
                skipped += 1
                done += 1
                continue
            outcome = handle(projection, ctx, record, from_retry)
            if outcome is Outcome.WAIT:  # not due yet: hold the retry partition
                self.holds.append((tp, record))
                break
            done += 1
            if outcome is not Outcome.APPLIED:
                invalid += engine.count_outcome(projection.table, tp.topic, outcome)
        engine.events_skipped += skipped
        engine.events_invalid += invalid
        if not done:
            return
        engine.events_processed += done
        engine.metrics.partition_done(projection.table, tp.topic, done, skipped, invalid)
        last = records[done - 1].offset
        ctx.tx.applied(tp.topic, last)
        self.commits[tp] = last + 1

    def _commit_floor(self) -> None:
        """A partition that feeds several projections is committed only as far as
        all of them have applied it (each skips what its own store has applied)."""
        engine = self.engine
        for tp in self.commits:
            projections = engine.by_topic[tp.topic]
            if len(projections) < 2:
                continue
            floor = self.commits[tp]
            for p in projections:
                floor = min(floor, self._applied(p.table, tp) + 1)
            self.commits[tp] = floor

    def _applied(self, table: str, tp: TopicPartition) -> int:
        """Last offset of ``tp`` applied to ``table`` as of this batch; -1 if none."""
        ctx = self.contexts.get((table, tp.partition))
        tx = ctx.tx if ctx is not None else None
        while tx is not None and tp.topic not in tx.offsets:
            tx = tx.parent
        if tx is not None:
            return tx.offsets[tp.topic]
        store = self.engine.stores.get((table, tp.partition))
        return store.offset(tp.topic) if store is not None else -1

    # -- 2. side effects -----------------------------------------------------

    async def run_side_effects(self) -> None:
        """Run each projection's ``after_batch``; route the records whose side
        effect failed as if their ``apply`` had raised."""
        engine = self.engine
        for (table, _), ctx in self.contexts.items():
            projection = engine.by_table[table]
            for record, exc in await projection.after_batch(ctx):
                meta = getattr(record, "retry", None)
                if meta is None:
                    engine.router.failed(projection, ctx, record, exc)
                else:
                    engine.router.retry_failed(projection, ctx, record, meta, exc)

    # -- 3. outputs ----------------------------------------------------------

    async def produce_outputs(self, sender: RecordSender) -> None:
        """Hand the outputs, retry and dead-letter records to the producer."""
        add, partitioner = sender.add, self.engine.partitioner
        for ctx in self.contexts.values():
            for (topic, _), (key, value) in ctx.outputs.items():
                if type(value) is not bytes:
                    value = orjson.dumps(value)
                add(topic, partitioner(key), key, value)
            for topic, rkey, rvalue, headers, partition in ctx.sends:
                add(topic, partition, rkey, rvalue, headers)
        self._outputs = await sender.submit()

    # -- 4. changelog + offsets ------------------------------------------------

    async def outputs_acknowledged(self) -> None:
        """Wait until the broker has acknowledged the outputs (the changelog's
        offsets record must never get ahead of them)."""
        if self._outputs is not None:
            await self._outputs.acknowledged()

    async def produce_changelog(self, sender: RecordSender) -> None:
        """Wait for the outputs' acks; then prepare every transaction and send its
        changelog records, ending with the offsets record."""
        await self.outputs_acknowledged()
        add, engine = sender.add, self.engine
        for (table, partition), ctx in self.contexts.items():
            changelog = engine.changelog_topic(table)
            ctx.tx.prepare()
            records = 0
            for key, value in ctx.tx.changelog():
                add(changelog, partition, key, value)
                records += 1
            engine.metrics.changelog_written(table, records)
        self._changelog = await sender.submit()

    # -- 5. RocksDB ------------------------------------------------------------

    async def acknowledged(self) -> None:
        """Wait until the broker has acknowledged the batch's changelog records."""
        assert self._changelog is not None, "produce_changelog() comes first"
        await self._changelog.acknowledged()

    async def write_stores(self) -> None:
        """Wait for the changelog's acks; flush every transaction to its store
        with the changelog offset that covers it."""
        assert self._changelog is not None, "produce_changelog() comes first"
        last = await self._changelog.acknowledged()
        for (table, partition), ctx in self.contexts.items():
            ctx.tx.flush(last[(self.engine.changelog_topic(table), partition)])
        self.parent = None

    # -- 6. consumer offsets ---------------------------------------------------

    async def commit_offsets(
        self, commit: Callable[[dict[TopicPartition, int]], Awaitable[None]]
    ) -> None:
        """Commit the batch's consumer offsets through ``commit``."""
        await commit(self.commits)

    def fail(self) -> None:
        """Abandon the batch: none of its transactions will reach the stores."""
        for ctx in self.contexts.values():
            ctx.tx.fail()

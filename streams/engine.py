"""The batch projection engine: Kafka batches → RocksDB read models, effectively once.

Faust's per-event path costs tens of microseconds per event; read models
that keep up with Kafka need that cost amortised over batches. The engine runs
inside the Faust app as a service. Per batch, one
:class:`~streams.checkpoint.BatchCommit` does the steps:

1. ``getmany`` up to ``batch_max_records`` records (waiting at most
   ``batch_max_wait_ms``), per partition in offset order, so per-key order holds;
2. **apply**: skip records at or below the offset the partition's store has
   applied (replays after a crash or rebalance change nothing) and hand each
   other record to every projection its topic feeds (each has its own table),
   which reads and writes a :class:`~tables.transaction.Transaction`;
3. **produce outputs** (downstream topics, retry and dead-letter records);
4. **produce changelog + offsets**: once the outputs are acknowledged, every
   touched key's new value to the table's changelog topic (same partition
   number as the source) and a record of the applied source offsets
   (:mod:`tables.changelog`), all as whole batches (acks=all, idempotent producer);
5. **write RocksDB**: once the changelog is acknowledged, each transaction in
   one ``WriteBatch`` with those offsets;
6. **commit offsets** of the consumer group.

Steps 1 to 3 run in the engine's loop; steps 4 to 6 of each batch run in a
task of their own, chained in batch order (changelogs produced, stores
written and offsets committed in the order the batches were applied), so the
loop fetches and applies the next batch while earlier ones wait for their acks.
Up to ``pipeline_depth`` batches are in flight; each reads the changes of
those before it from their transactions. With no backlog, a batch reaches
RocksDB two broker round trips after it was fetched (outputs, then changelog).

A crash anywhere leaves the changelog at or ahead of the local store; on
assignment, a partition replays its changelog from the last changelog offset
its store has seen, which also restores the applied source offsets. Records
whose effects are already in the store are then skipped by offset. Only
complete batches are replayed: data records that reached the changelog
without their offsets record (a worker killed while producing them) are left
out, here and in later replays (:class:`~tables.changelog.ChangelogReplay`),
since their events are applied again. A batch redone
after a crash may emit its outputs twice, which their consumers absorb the
same way (customer facts are versioned upserts, retry copies carry sequence
numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from mode import Service

from tables.changelog import CHANGELOG, SEQ, ChangelogReplay
from tables.store import PartitionStore, RocksDBOptions

from .assignor import HostAwareRangeAssignor
from .catalogue import TopicSpec, changelog_spec
from .checkpoint import Batch, BatchCommit
from .confluent_transport import ConfluentTransport
from .failures import FailureRouter, Outcome, RetryPolicy, retry_topic
from .healing import StoreHealer
from .metrics import EngineMetrics
from .outputs import KeyPartitioner
from .pipeline import BatchPipeline
from .projection import Projection
from .settings import Settings
from .standby import StandbyReplicas
from .transport import Consumer, KafkaTransport, RecordSender, Transport

logger = logging.getLogger(__name__)


class Lookup(Enum):
    """Where :meth:`ProjectionEngine.lookup` found a key."""

    LOCAL = "local"
    """This worker owns the key's partition: the value (or None) is here."""
    REMOTE = "remote"
    """Another worker owns it: the value is its URL."""
    UNAVAILABLE = "unavailable"
    """Partitions are being assigned: retry shortly."""
    ABSENT = "absent"
    """This worker does not run the table's projection."""


def make_transport(
    settings: Settings, assignor: HostAwareRangeAssignor, changelogs: list[TopicSpec]
) -> Transport:
    """The engine's Kafka clients on the client EVENTIDE_KAFKA_CLIENT names."""
    if settings.kafka_client == "aiokafka":
        return KafkaTransport(settings, assignor, changelogs)
    return ConfluentTransport(settings, assignor, changelogs)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: ProjectionEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.engine.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.engine.on_assigned(assigned)


class ProjectionEngine(Service):
    """Runs projections over batches; owns their partition stores."""

    def __init__(
        self,
        settings: Settings,
        projections: Iterable[Projection],
        metrics: EngineMetrics | None = None,
        transport: Transport | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.settings = settings
        self.projections = list(projections)
        self.by_topic: dict[str, list[Projection]] = {}
        """topic → the projections it feeds, each with its own table (and store)."""
        for p in self.projections:
            for t in p.sources:
                self.by_topic.setdefault(t, []).append(p)
        self.retry_topics = {retry_topic(t): t for t in self.by_topic}
        """retry topic → its source topic; consumed by the same projection."""
        self.by_topic.update({r: self.by_topic[t] for r, t in self.retry_topics.items()})
        self.router = FailureRouter(
            RetryPolicy(
                attempts=settings.retry_attempts,
                backoff_ms=settings.retry_backoff_ms,
                backoff_max_ms=settings.retry_backoff_max_ms,
            )
        )
        self.by_table = {p.table: p for p in self.projections}
        self.stores: dict[tuple[str, int], PartitionStore] = {}
        """(table, partition) → the store of a partition this worker owns."""
        self.assignor = HostAwareRangeAssignor(settings.web_url)
        self.ready = False
        self.partitioner = KeyPartitioner(settings.partitions)
        self.rocksdb = RocksDBOptions()
        self.transport: Transport = transport or make_transport(
            settings, self.assignor, [p.changelog_spec for p in self.projections]
        )
        self.standbys = StandbyReplicas(self)
        """Warm copies of partitions other workers own (EVENTIDE_STANDBY_REPLICAS)."""
        self.healer = StoreHealer(self)
        """Opens and restores table partitions; retries those that failed."""
        self.polled = time.monotonic()  # when the engine last polled its consumer
        self._lock = asyncio.Lock()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        """Offsets of completed batches awaiting the background commit."""
        self._committer: asyncio.Future[None] | None = None
        """Positions applied by the stores beyond the group's committed offsets."""
        self.events_processed = 0
        self.outcomes: dict[str, int] = {}
        """Records by failure-path outcome (retried, parked, dead-lettered, ...)."""
        self.events_skipped = 0
        self.events_invalid = 0
        self.metrics = metrics if metrics is not None else EngineMetrics()
        """Prometheus metrics (streams/metrics.py), served at GET /metrics."""
        self.metrics.watch_stores(self.stores)
        self.pipeline = BatchPipeline(self.metrics, self._commit, settings.pipeline_depth)
        """Batches applied and waiting for their acks (steps 4 to 6)."""
        self.rebalance_listeners: list[Callable[[str], Awaitable[None]]] = []
        """Awaited with a reason, under the engine's lock, when partitions are
        revoked or assigned and when the engine stops (rebuilds abort)."""

    # -- names ---------------------------------------------------------------

    @property
    def group_id(self) -> str:
        """Consumer group of the projections."""
        return self.settings.projection_group

    def changelog_topic(self, table: str) -> str:
        """The changelog topic of ``table``."""
        projection = self.by_table.get(table)
        if projection is not None:
            return projection.changelog
        return self.settings.topic(changelog_spec(self.settings, table).name)

    def store_path(self, table: str, partition: int) -> Path:
        """Folder of one table partition's RocksDB."""
        return self.settings.data_dir / "tables" / table / str(partition)

    @property
    def consumer(self) -> Consumer | None:
        """The projections' consumer (None before the engine starts)."""
        return self.transport.consumer

    @property
    def standby_stores(self) -> Mapping[tuple[str, int], PartitionStore]:
        """Warm copies of table partitions other workers own."""
        return self.standbys.stores

    def live_stores(self, table: str) -> dict[int, PartitionStore]:
        """partition → store of every partition of ``table`` this worker owns."""
        return {p: store for (t, p), store in sorted(self.stores.items()) if t == table}

    # -- lifecycle -----------------------------------------------------------

    async def on_start(self) -> None:
        await self.transport.start(sorted(self.by_topic), _Rebalance(self))

    async def on_stop(self) -> None:
        async with self._lock:
            self.ready = False
            await self._notify_rebalance("the worker is stopping")
            await self.complete_pending()
            await self.flush_commits()
            await self.transport.stop()
            for projection in self.projections:
                await projection.close()
            for store in self.stores.values():
                store.close()
            self.stores.clear()
            self.standbys.close()
        self.pipeline.cancel()

    @Service.task
    async def _run(self) -> None:
        consumer = self.transport.consumer
        assert consumer is not None
        wait_ms = self.settings.batch_max_wait_ms
        max_records = self.settings.batch_max_records
        while not self.should_stop:
            self.polled = time.monotonic()  # /health: the consumer is polled (streams/health.py)
            batch = await consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
            async with self._lock:
                if batch:
                    await self.process(batch)
                else:
                    await self.complete_pending()

    @Service.task
    async def _follow_standbys(self) -> None:
        await self.standbys.run()

    # -- the batch -----------------------------------------------------------

    async def process(self, batch: Batch) -> None:
        """Apply one batch and send its outputs; its changelog, RocksDB write and
        offset commit follow in a task of its own (:mod:`streams.pipeline`).

        Returns once the batch is applied and its outputs handed to the
        producer, unless ``pipeline_depth`` batches are in flight: then once
        the oldest is complete. A batch that failed to complete fails the next
        call (every batch after it read its changes and fails too).
        """
        pipeline = self.pipeline
        pipeline.reap()
        sender = self._sender()
        commit = BatchCommit(self, parent=pipeline.last)
        try:
            commit.apply(batch)
            for tp, record in commit.holds:
                self._hold(tp, record)
            await commit.run_side_effects()
            async with pipeline.send_lock:
                await commit.produce_outputs(sender)
        except BaseException:
            commit.fail()
            raise
        self.metrics.batch_processed(batch, commit, commit.started)
        await pipeline.add(commit, sender)

    async def complete_pending(self) -> None:
        """Wait until every batch in flight is in RocksDB and its offsets handed to
        the committer; raise the first failure."""
        await self.pipeline.complete()
        if self._uncommitted:
            await self._commit({})

    def count_outcome(self, table: str, topic: str, outcome: Outcome) -> int:
        """Count a record that was not simply applied; 1 if it was invalid input."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome is Outcome.INVALID or outcome is Outcome.BAD_KEY:
            self.metrics.dead_letter(
                table, topic, "invalid" if outcome is Outcome.INVALID else "key"
            )
            return 1
        if outcome is Outcome.RETRIED:
            self.metrics.retried(table, topic)
        elif outcome is Outcome.DEAD:
            self.metrics.dead_letter(table, topic, "exhausted")
        return 0

    def _sender(self) -> RecordSender:
        sender = self.transport.sender
        if sender is None:
            raise RuntimeError("the engine's producer is not started")
        return sender

    def _hold(self, tp: TopicPartition, record: Any) -> None:
        """Pause a retry partition at ``record`` until its not-before time."""
        consumer = self.transport.consumer
        assert consumer is not None
        consumer.seek(tp, record.offset)
        consumer.pause(tp)
        delay = max(0.0, self.router.due_in_ms(record) / 1000)

        def resume() -> None:
            if tp in consumer.assignment():
                consumer.resume(tp)

        asyncio.get_running_loop().call_later(delay, resume)

    async def _commit(self, commits: dict[TopicPartition, int]) -> None:
        """Have ``commits`` committed for the group, in the background.

        An offset commit is a round trip to the group coordinator (tens of ms
        on a busy broker); the batch path does not wait for it. The stores hold
        the applied offsets, so a commit that comes late or never only makes a
        restarted or new owner skip more records by offset. A commit failure
        other than a rebalance is raised here, at the next batch.
        """
        committer = self._committer
        if committer is not None and committer.done():
            self._committer = None
            committer.result()  # raises what the last background commit raised
        self._to_commit.update(commits)
        # The lag metric counts from here: these offsets are in RocksDB already.
        self.metrics.committed(commits)
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_in_background())

    async def _commit_in_background(self) -> None:
        consumer = self.transport.consumer
        assert consumer is not None
        while self._to_commit or self._uncommitted:
            assigned = consumer.assignment()
            offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
            offsets.update(self._to_commit)
            self._uncommitted, self._to_commit = {}, {}
            try:
                await consumer.commit(offsets)
                self.metrics.committed(offsets)
            except CommitFailedError as exc:
                # The stores hold the applied offsets; the next owner seeks past them.
                logger.info("offset commit skipped during a rebalance: %s", exc)

    async def flush_commits(self) -> None:
        """Wait for the background offset commits (before partitions move, or a stop)."""
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer

    # -- the public API of rebuilds and operator tools ------------------------

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the engine's lock: no batch, rebalance or standby step runs meanwhile."""
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the engine still: no batch runs, and the in-flight one is complete
        (its offsets committed)."""
        async with self._lock:
            await self.complete_pending()
            await self.flush_commits()
            yield

    async def write_changelog(
        self, table: str, records: Mapping[int, Iterable[tuple[bytes, bytes | None]]]
    ) -> dict[int, int]:
        """Send records to ``table``'s changelog (partition → records) and wait
        for the acks; return the last offset written per partition."""
        sender = self._sender()
        topic = self.changelog_topic(table)
        for partition, items in records.items():
            for key, value in items:
                await sender.append(topic, partition, key, value)
        last = await sender.flush()
        return {p: last[(topic, p)] for p in records if (topic, p) in last}

    def replace_store(self, table: str, partition: int, store: PartitionStore) -> None:
        """Serve ``table``'s partition from ``store`` from now on (a rebuild's switch)."""
        self.stores[(table, partition)] = store

    # -- rebalancing and recovery -------------------------------------------

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Close the stores of partitions this worker no longer owns."""
        async with self._lock:
            self.ready = False
            await self._notify_rebalance(f"rebalance: {len(revoked)} partitions revoked")
            await self.complete_pending()
            await self.flush_commits()
            self.metrics.revoked(revoked)
            for tp in revoked:
                for projection in self.by_topic.get(tp.topic, ()):
                    self.healer.failed.pop((projection.table, tp.partition), None)
                    store = self.stores.pop((projection.table, tp.partition), None)
                    if store is not None:
                        store.close()

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Open and recover the stores of new partitions; seek past applied offsets."""
        consumer = self.transport.consumer
        assert consumer is not None
        async with self._lock:
            await self._notify_rebalance(f"rebalance: {len(assigned)} partitions assigned")
            started = time.monotonic()
            restored = 0
            for table, partition in sorted(
                {(p.table, tp.partition) for tp in assigned for p in self.by_topic[tp.topic]}
            ):
                if (table, partition) not in self.stores:
                    # A damaged store is moved aside and restored; one that cannot be
                    # restored is retried in the background (streams/healing.py).
                    store, count = await self.healer.open(table, partition)
                    if store is not None:
                        self.stores[(table, partition)] = store
                        restored += count
            for tp in assigned:
                await self.seek_applied(consumer, tp)
            self.ready = True
            elapsed = time.monotonic() - started
            logger.info(
                "assigned %d partitions; restored %d changelog records in %.2fs; ready",
                len(assigned),
                restored,
                elapsed,
            )
            self.metrics.assigned(len(assigned), restored, elapsed)

    async def seek_applied(self, consumer: Consumer, tp: TopicPartition) -> bool:
        """Seek ``tp`` past the offsets its stores applied; pause it (False) while
        one of them cannot be served."""
        stores = [self.stores.get((p.table, tp.partition)) for p in self.by_topic[tp.topic]]
        if None in stores:
            consumer.pause(tp)
            return False
        applied = min(store.offset(tp.topic) for store in stores if store is not None)
        committed = await consumer.committed(tp)
        position = max(applied + 1, committed or 0)
        consumer.seek(tp, position)
        if position > (committed or 0):
            # Applied but not committed (a crash between the two): commit it
            # with the next batch, or at once if nothing new arrives.
            self._uncommitted[tp] = position
        return True

    @Service.task
    async def _heal_failed_partitions(self) -> None:
        await self.healer.run()

    async def _notify_rebalance(self, reason: str) -> None:
        for listener in self.rebalance_listeners:
            await listener(reason)

    async def recover(self, table: str, partition: int, store: PartitionStore) -> int:
        """Replay the changelog from the store's last changelog offset to its end;
        return the number of records replayed."""
        topic = self.changelog_topic(table)
        count = 0
        replay = ChangelogReplay(store.offset(SEQ))
        async for records in self.transport.read(topic, partition, store.offset(CHANGELOG) + 1):
            replay.restore(store, records)
            count += len(records)
        if count:
            logger.info("restored %s[%d]: %d records", topic, partition, count)
        if replay.left_out:  # a worker stopped while producing them; their events are redone
            msg = "restored %s[%d] without %d records of an unfinished batch"
            logger.warning(msg, topic, partition, replay.left_out)
        return count

    # -- queries -------------------------------------------------------------

    def lookup(self, table: str, key: str) -> tuple[Lookup, Any]:
        """Find ``key`` in ``table``: (:class:`Lookup`, document, URL or None)."""
        projection = self.by_table.get(table)
        if projection is None:
            return Lookup.ABSENT, None
        raw = key.encode()
        partition = self.partitioner(raw)
        store = self.stores.get((table, partition))
        if store is not None and self.ready:
            stored = store.get(raw)
            return Lookup.LOCAL, None if stored is None else projection.view(stored)
        owner = self.assignor.owner(projection.query_topic, partition)
        if owner is not None and owner != self.settings.web_url:
            return Lookup.REMOTE, owner
        return Lookup.UNAVAILABLE, None

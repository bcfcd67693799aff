"""The batch projection engine: Kafka batches → RocksDB read models, effectively once.

Faust's per-event path costs tens of microseconds per event; read models
that keep up with Kafka need that cost amortised over batches. The engine runs
inside the Faust app as a service and does, per batch:

1. ``getmany`` up to ``batch_max_records`` records (waiting at most
   ``batch_max_wait_ms``), per partition in offset order, so per-key order holds;
2. skip records at or below the offset the partition's store has applied
   (replays after a crash or rebalance change nothing);
3. hand each record to every projection its topic feeds (each has its own
   table), which reads and writes a :class:`~tables.store.Transaction`: each
   key touched is written once; a topic feeding several projections is
   committed only as far as all of them have applied it;
4. send the projections' outputs and wait for their acknowledgements; then
   send every touched key's new value to the table's changelog topic (same
   partition number as the source) and a meta record with the applied source
   offsets, all as whole batches, and wait for the acknowledgements (acks=all,
   idempotent producer);
5. write the transaction to RocksDB in one ``WriteBatch`` with those offsets;
6. commit the consumer offsets.

Steps 4 to 6 of one batch overlap steps 1 to 3 of the next (pipelining one batch
deep); the next batch reads the in-flight batch's changes from its transaction.

A crash anywhere leaves the changelog at or ahead of the local store; on
assignment, a partition replays its changelog from the last changelog offset
its store has seen, which also restores the applied source offsets. Records
whose effects are already in the store are then skipped by offset; effects
that reached the changelog without their meta record are absorbed by the
projections' per-entity deduplication (event ids, upserts). Outputs are
acknowledged before the changelog is sent, so a batch the changelog marks
as done never lacks its outputs; a batch redone after a crash may emit its
outputs twice, which their consumers absorb the same way (customer facts are
versioned upserts, retry copies carry sequence numbers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from mode import Service

from tables.changelog import CHANGELOG, apply_changelog
from tables.store import PartitionStore, RocksDBOptions
from tables.transaction import Transaction

from .assignor import HostAwareRangeAssignor
from .failures import FailureRouter, Outcome, RetryPolicy, retry_topic
from .metrics import EngineMetrics
from .outputs import BatchSender, KeyPartitioner, Submitted
from .projection import BatchContext, Projection
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """A batch whose records were handed to the producer but not yet acknowledged."""

    contexts: dict[tuple[str, int], BatchContext]
    encoded: dict[tuple[str, int], dict[bytes, bytes | None]]
    commits: dict[TopicPartition, int]
    submitted: Submitted


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
        self.standby_stores: dict[tuple[str, int], PartitionStore] = {}
        """Warm copies of partitions other workers own (EVENTIDE_STANDBY_REPLICAS)."""
        self.assignor = HostAwareRangeAssignor(settings.web_url)
        self.ready = False
        self.partitioner = KeyPartitioner(settings.partitions)
        self.rocksdb = RocksDBOptions()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sender: BatchSender | None = None
        self._pending: _InFlight | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        """Positions applied by the stores beyond the group's committed offsets."""
        self.events_processed = 0
        self.outcomes: dict[str, int] = {}
        """Records by failure-path outcome (retried, parked, dead-lettered, ...)."""
        self.events_skipped = 0
        self.events_invalid = 0
        self.metrics = metrics if metrics is not None else EngineMetrics()
        """Prometheus metrics (streams/metrics.py), served at GET /metrics."""
        self.metrics.watch_stores(self.stores)
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
        return self.settings.topic(f"{self.settings.app_id}-{table}-changelog")

    def store_path(self, table: str, partition: int) -> Path:
        """Folder of one table partition's RocksDB."""
        return self.settings.data_dir / "tables" / table / str(partition)

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The projections' consumer (None before the engine starts)."""
        return self._consumer

    def _routes(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> Iterator[tuple[TopicPartition, list[ConsumerRecord[Any, Any]], Projection]]:
        """(partition, records, projection) for every projection each partition feeds."""
        for tp, records in batch.items():
            for projection in self.by_topic[tp.topic]:
                yield tp, records, projection

    def _commit_floor(
        self, commits: dict[TopicPartition, int], contexts: dict[tuple[str, int], BatchContext]
    ) -> None:
        """A partition that feeds several projections is committed only as far as
        all of them have applied it (each skips what its own store has applied)."""
        for tp in commits:
            projections = self.by_topic[tp.topic]
            if len(projections) < 2:
                continue
            floor = commits[tp]
            for p in projections:
                ctx = contexts.get((p.table, tp.partition))
                tx = ctx.tx if ctx is not None else None
                while tx is not None and tp.topic not in tx.offsets:
                    tx = tx.parent
                store = self.stores.get((p.table, tp.partition))
                applied = (
                    tx.offsets[tp.topic]
                    if tx is not None
                    else store.offset(tp.topic)
                    if store is not None
                    else -1
                )
                floor = min(floor, applied + 1)
            commits[tp] = floor

    # -- lifecycle -----------------------------------------------------------

    async def on_start(self) -> None:
        await self._ensure_changelogs()
        servers = self.settings.bootstrap_servers
        self._producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            client_id=f"{self.group_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await self._producer.start()
        self._sender = BatchSender(self._producer)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            client_id=f"{self.group_id}-consumer",
            group_id=self.group_id,
            # Static membership: a restarted worker takes its partitions back
            # at once instead of waiting out the old member's session.
            group_instance_id=f"{self.group_id}-{self.settings.web_host}:{self.settings.web_port}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(self.assignor,),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            max_poll_interval_ms=300_000,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 4),
        )
        await self._consumer.start()
        self._consumer.subscribe(sorted(self.by_topic), listener=_Rebalance(self))

    async def on_stop(self) -> None:
        async with self._lock:
            self.ready = False
            await self._notify_rebalance("the worker is stopping")
            await self.complete_pending()
            if self._consumer is not None:
                await self._consumer.stop()  # leaves the group: partitions move at once
            if self._producer is not None:
                await self._producer.stop()
            for store in [*self.stores.values(), *self.standby_stores.values()]:
                store.close()
            self.stores.clear()
            self.standby_stores.clear()

    @Service.task
    async def _run(self) -> None:
        assert self._consumer is not None
        wait_ms = self.settings.batch_max_wait_ms
        max_records = self.settings.batch_max_records
        while not self.should_stop:
            batch = await self._consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
            async with self._lock:
                if batch:
                    await self.process(batch)
                else:
                    await self.complete_pending()

    # -- the batch -----------------------------------------------------------

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Apply one batch and send its records; then complete the batch before it.

        Batches are pipelined one deep: while batch *n*'s records travel to the
        broker, batch *n+1* is applied, reading batch *n*'s changes from its
        transaction. Batch *n* is written to RocksDB and its offsets committed
        only once the broker has acknowledged all of its records.
        """
        assert self._sender is not None and self._consumer is not None
        started = time.perf_counter()
        self.router.begin_batch()
        pending = self._pending.contexts if self._pending is not None else {}
        contexts: dict[tuple[str, int], BatchContext] = {}
        commits: dict[TopicPartition, int] = {}
        for tp, records, projection in self._routes(batch):
            key = (projection.table, tp.partition)
            store = self.stores.get(key)
            if store is None:  # revoked meanwhile
                continue
            ctx = contexts.get(key)
            if ctx is None:
                parent = pending.get(key)
                ctx = contexts[key] = BatchContext(
                    Transaction(store, parent.tx if parent else None)
                )
            applied = store.offset(tp.topic)
            skipped, invalid = self.events_skipped, self.events_invalid
            from_retry = tp.topic in self.retry_topics
            handle = self.router.handle
            done = 0  # records of the partition handled (a held retry stops the loop)
            for record in records:
                if record.offset <= applied:
                    self.events_skipped += 1
                    done += 1
                    continue
                outcome = handle(projection, ctx, record, from_retry)
                if outcome is Outcome.WAIT:  # not due yet: hold the retry partition
                    self._hold(tp, record)
                    break
                done += 1
                if outcome is not Outcome.APPLIED:
                    self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                    if outcome is Outcome.INVALID:
                        self.events_invalid += 1
                        self.metrics.dead_letter(projection.table, tp.topic, "invalid")
                    elif outcome is Outcome.RETRIED:
                        self.metrics.retried(projection.table, tp.topic)
                    elif outcome is Outcome.DEAD:
                        self.metrics.dead_letter(projection.table, tp.topic, "exhausted")
            if not done:
                continue
            if done < len(records):
                records = records[:done]
            self.events_processed += len(records)
            self.metrics.partition_done(
                projection.table,
                tp.topic,
                len(records),
                self.events_skipped - skipped,
                self.events_invalid - invalid,
            )
            ctx.tx.applied(tp.topic, records[-1].offset)
            commits[tp] = records[-1].offset + 1
        self._commit_floor(commits, contexts)

        for (table, _), ctx in contexts.items():
            projection = self.by_table[table]
            for record, exc in await projection.after_batch(ctx):
                meta = getattr(record, "retry", None)
                if meta is None:
                    self.router.failed(projection, ctx, record, exc)
                else:
                    self.router.retry_failed(projection, ctx, record, meta, exc)

        # Outputs (downstream topics, retry and dead-letter records) first, and
        # the changelog only once they are acknowledged: a changelog whose
        # offsets meta record reached the broker means this batch is done, and
        # a restart will not redo it, so its outputs must be there already.
        sender = self._sender
        add, partitioner = sender.add, self.partitioner
        for ctx in contexts.values():
            for (topic, _), (ok, ov) in ctx.outputs.items():
                add(topic, partitioner(ok), ok, ov)
            for topic, rk, rv, headers, part in ctx.sends:
                add(topic, part, rk, rv, headers)
        outputs = await sender.submit()
        await self.complete_pending()  # the previous batch, meanwhile
        await outputs.acknowledged()
        encoded: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
        for (table, partition), ctx in contexts.items():
            changelog = self.changelog_topic(table)
            values = encoded[(table, partition)] = ctx.tx.prepare()
            for k, v in ctx.tx.changelog():
                add(changelog, partition, k, v)
            self.metrics.changelog_written(table, len(values) + 1)
        submitted = await sender.submit()
        self._pending = _InFlight(contexts, encoded, commits, submitted)
        self.metrics.batch_processed(batch, self._pending, started)

    def _hold(self, tp: TopicPartition, record: Any) -> None:
        """Pause a retry partition at ``record`` until its not-before time."""
        assert self._consumer is not None
        consumer = self._consumer
        consumer.seek(tp, record.offset)
        consumer.pause(tp)
        delay = max(0.0, self.router.due_in_ms(record) / 1000)

        def resume() -> None:
            if tp in consumer.assignment():
                consumer.resume(tp)

        asyncio.get_running_loop().call_later(delay, resume)

    async def complete_pending(self) -> None:
        """Wait for the in-flight batch's acks, write it to RocksDB, commit its offsets."""
        inflight, self._pending = self._pending, None
        if inflight is None:
            if self._uncommitted:
                await self._commit(self._uncommitted)
            return
        assert self._consumer is not None
        last = await inflight.submitted.acknowledged()
        for (table, partition), ctx in inflight.contexts.items():
            ctx.tx.flush(last[(self.changelog_topic(table), partition)])
        self.metrics.batch_committed(inflight)
        if inflight.commits or self._uncommitted:
            await self._commit(inflight.commits)

    async def _commit(self, commits: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        offsets.update(commits)
        self._uncommitted = {}
        try:
            await self._consumer.commit(offsets)
            self.metrics.committed(offsets)
        except CommitFailedError as exc:
            # The stores hold the applied offsets; the next owner seeks past them.
            logger.info("offset commit skipped during a rebalance: %s", exc)

    # -- rebalancing and recovery -------------------------------------------

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Close the stores of partitions this worker no longer owns."""
        async with self._lock:
            self.ready = False
            await self._notify_rebalance(f"rebalance: {len(revoked)} partitions revoked")
            await self.complete_pending()
            self.metrics.revoked(revoked)
            for tp in revoked:
                for projection in self.by_topic.get(tp.topic, ()):
                    store = self.stores.pop((projection.table, tp.partition), None)
                    if store is not None:
                        store.close()

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Open and recover the stores of new partitions; seek past applied offsets."""
        assert self._consumer is not None
        async with self._lock:
            await self._notify_rebalance(f"rebalance: {len(assigned)} partitions assigned")
            started = time.monotonic()
            restored = 0
            for table, partition in sorted(
                {(p.table, tp.partition) for tp in assigned for p in self.by_topic[tp.topic]}
            ):
                if (table, partition) not in self.stores:
                    store = self.standby_stores.pop((table, partition), None) or PartitionStore(
                        self.store_path(table, partition), self.rocksdb
                    )
                    restored += await self._recover(table, partition, store)
                    self.stores[(table, partition)] = store
            for tp in assigned:
                applied = min(
                    self.stores[(p.table, tp.partition)].offset(tp.topic)
                    for p in self.by_topic[tp.topic]
                )
                committed = await self._consumer.committed(tp)
                position = max(applied + 1, committed or 0)
                self._consumer.seek(tp, position)
                if position > (committed or 0):
                    # Applied but not committed (a crash between the two): commit it
                    # with the next batch, or at once if nothing new arrives.
                    self._uncommitted[tp] = position
            self.ready = True
            logger.info(
                "assigned %d partitions; restored %d changelog records in %.2fs; ready",
                len(assigned),
                restored,
                time.monotonic() - started,
            )
            self.metrics.assigned(len(assigned), restored, time.monotonic() - started)

    async def _notify_rebalance(self, reason: str) -> None:
        for listener in self.rebalance_listeners:
            await listener(reason)

    async def _recover(self, table: str, partition: int, store: PartitionStore) -> int:
        """Replay the changelog from the store's last changelog offset to its end."""
        topic = self.changelog_topic(table)
        tp = TopicPartition(topic, partition)
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"{self.group_id}-restore",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            start = store.offset(CHANGELOG) + 1
            if start >= end:
                return 0
            reader.seek(tp, start)
            count = 0
            position = start
            while position < end:
                got = await reader.getmany(tp, timeout_ms=1000, max_records=20_000)
                records = [r for r in got.get(tp, []) if r.offset < end]
                if records:
                    apply_changelog(store, records)
                    position = records[-1].offset + 1
                    count += len(records)
            logger.info("restored %s[%d]: %d records", topic, partition, count)
            return count
        finally:
            await reader.stop()

    async def _ensure_changelogs(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    self.changelog_topic(p.table),
                    self.settings.partitions,
                    self.settings.replication_factor,
                    topic_configs={"cleanup.policy": "compact"},
                )
                for p in self.projections
                if self.changelog_topic(p.table) not in existing
            ]
            if missing:
                response = await admin.create_topics(missing)
                for name, code, message in (e[:3] for e in response.topic_errors):
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise RuntimeError(f"could not create changelog {name!r}: {message}")
        finally:
            await admin.close()

    # -- standby replicas ----------------------------------------------------

    def standby_targets(self) -> set[tuple[str, int]]:
        """Table partitions this worker keeps warm: those owned by the next
        ``standby_replicas`` workers before it in URL order."""
        replicas = self.settings.standby_replicas
        urls = sorted(self.assignor.hosts)
        me = self.settings.web_url
        if replicas == 0 or me not in urls or len(urls) < 2:
            return set()
        targets = set()
        i = urls.index(me)
        owners = {urls[(i - k) % len(urls)] for k in range(1, min(replicas, len(urls) - 1) + 1)}
        for projection in self.projections:
            for url in owners:
                for partition in self.assignor.hosts[url].get(projection.query_topic, ()):
                    targets.add((projection.table, partition))
        return targets - set(self.stores)

    @Service.task
    async def _standby(self) -> None:
        if self.settings.standby_replicas == 0:
            return
        table_of = {self.changelog_topic(p.table): p.table for p in self.projections}
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"{self.group_id}-standby",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await reader.start()
        current: set[tuple[str, int]] = set()
        try:
            while not self.should_stop:
                wanted = self.standby_targets() if self.ready else current
                if wanted != current:
                    async with self._lock:
                        for key in current - wanted:
                            store = self.standby_stores.pop(key, None)
                            if store is not None:
                                store.close()
                        for key in wanted - current:
                            if key not in self.stores and key not in self.standby_stores:
                                self.standby_stores[key] = PartitionStore(
                                    self.store_path(*key), self.rocksdb
                                )
                        tps = {
                            TopicPartition(self.changelog_topic(t), p): (t, p)
                            for t, p in self.standby_stores
                        }
                        reader.assign(list(tps))
                        for tp, key in tps.items():
                            reader.seek(tp, self.standby_stores[key].offset(CHANGELOG) + 1)
                    current = wanted
                    logger.info("standby for %s", sorted(f"{t}[{p}]" for t, p in current))
                if not current:
                    await asyncio.sleep(1.0)
                    continue
                got = await reader.getmany(timeout_ms=500, max_records=20_000)
                async with self._lock:
                    for tp, records in got.items():
                        store = self.standby_stores.get((table_of[tp.topic], tp.partition))
                        if store is not None and records:
                            apply_changelog(store, records)
        finally:
            await reader.stop()

    # -- queries -------------------------------------------------------------

    def lookup(self, table: str, key: str) -> tuple[str, Any]:
        """Find ``key`` in ``table``.

        Returns ("local", document or None), ("remote", owner URL),
        ("unavailable", None) while partitions are being assigned, or
        ("absent", None) when this worker does not run the table's projection.
        """
        projection = self.by_table.get(table)
        if projection is None:
            return "absent", None
        raw = key.encode()
        partition = self.partitioner(raw)
        store = self.stores.get((table, partition))
        if store is not None and self.ready:
            stored = store.get(raw)
            return "local", None if stored is None else projection.view(stored)
        owner = self.assignor.owner(projection.query_topic, partition)
        if owner is not None and owner != self.settings.web_url:
            return "remote", owner
        return "unavailable", None

"""Rebuild a read model from its source topics, beside the live one, then switch.

``eventide rebuild <read-model>`` (eventide/tools/rebuild_client.py) asks every
worker to rebuild its partitions of the table (``POST /admin/rebuild/<table>``,
streams/views.py) and follows them (``GET``). Event topics keep their whole
history (``retention.ms=-1``, streams/topics.py), so a read model is a
function of its source topics. On a worker, for each partition of the table
the worker owns, a rebuild:

1. opens a fresh *shadow* store in ``<data dir>/tables/<table>.rebuild/<p>``;
2. reads the table's source topics (not their retry topics) from the
   beginning with its own consumer (manual assignment, no group, no commits)
   and applies every record with the projection's own
   :meth:`~streams.engine.Projection.apply` on a transaction of the shadow
   store. What the projection emits (downstream outputs, customer facts) is
   discarded, nothing goes to retry or dead-letter topics: a record the
   projection rejects is counted as *invalid* (bad input) or *failed* (the
   handler raised) and skipped;
3. never reads past the offset the live store has applied for each source
   partition, so it converges on the live position while the live engine
   keeps processing. Once at most one batch (``EVENTIDE_BATCH_MAX_RECORDS``)
   is left, it takes the engine's lock (the live engine waits), completes
   the live in-flight batch and applies the last records up to the live
   offsets;
4. switches, still under the lock: copies the live store's retry-queue state
   (``\\x00retry:`` keys, streams/failures.py) and retry-topic offsets into the
   shadow; writes every shadow key, a tombstone for every live key the shadow
   lacks, and the offsets meta record to the table's changelog, and waits for
   the acknowledgements (recovery from the changelog, and standbys, get the
   rebuilt state); then closes the live store, puts the shadow's folder in its
   place and serves queries from it.

**Aborts.** A rebalance, or the worker stopping, while a rebuild runs aborts
it: the shadow folders are removed and the live model is untouched (run the
command again). A source partition whose history was partly deleted (log
start offset above 0) fails the rebuild: a model rebuilt from part of the
events would be wrong. A crash during the switch leaves the changelog at or
ahead of the local store, which recovery replays, as after any crash.

**What differs from the live model.** Records that wait in a retry topic for
the live model were applied directly by the shadow; when they come back from
the retry topic after the switch, the projections' per-entity deduplication
(event ids, versioned upserts) absorbs them. The customers model is rebuilt
from the customer facts as published; rebuilding ``orders`` does not publish
them again. A projection with side effects sets ``rebuildable = False``
(notifications): its table records what was sent, which a replay cannot
reproduce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.exceptions import EventError
from tables.changelog import CHANGELOG, SEQ, next_seq, offsets_record
from tables.store import PartitionStore
from tables.transaction import Transaction

from .engine import ProjectionEngine
from .exceptions import (
    NotRebuildableError,
    RebuildError,
    RebuildRunningError,
    RebuildUnavailableError,
    UnknownReadModelError,
)
from .failures import STATE_PREFIX, retry_topic
from .kafka_clients import aiokafka_options
from .projection import BatchContext, Projection
from .rebuild_state import (
    ABORTED,
    FAILED,
    RUNNING,
    SWITCHED,
    PartitionProgress,
    Rebuild,
    RebuildPhase,
    RebuildState,
    iso_time,
)

logger = logging.getLogger(__name__)


SHADOW_SUFFIX = ".rebuild"
"""The shadow of table T lives in ``tables/T.rebuild/<partition>``."""
PROGRESS_LOG_SECONDS = 5.0
FINISH_TIMEOUT_SECONDS = 60.0
"""Longest the shadow may take, holding the engine's lock, to apply its last records."""
ABORT_WAIT_SECONDS = 30.0


class _Aborted(Exception):
    """The table's partitions changed under the rebuild."""


class RebuildManager:
    """Starts rebuilds on this worker, reports them, aborts them on rebalances.

    One rebuild per table at a time; rebuilds of different tables may run
    together. Runs on the engine's event loop.
    """

    def __init__(self, engine: ProjectionEngine) -> None:
        self.engine = engine
        self.rebuilds: dict[str, Rebuild] = {}
        """Table → its latest rebuild on this worker."""
        engine.rebalance_listeners.append(self.abort_all)

    def shadow_path(self, table: str, partition: int) -> Path:
        """Folder of a partition's shadow store."""
        return self.engine.settings.data_dir / "tables" / f"{table}{SHADOW_SUFFIX}" / str(partition)

    def projection(self, table: str) -> Projection:
        """The rebuildable projection of ``table``, or a :class:`RebuildError`."""
        projection = self.engine.by_table.get(table)
        if projection is None:
            known = ", ".join(sorted(self.engine.by_table))
            raise UnknownReadModelError(
                f"no read model named {table!r}; the read models are: {known}"
            )
        if not projection.rebuildable:
            raise NotRebuildableError(
                f"read model {table!r} cannot be rebuilt: its table records side effects "
                "(what was already sent), which replaying its source topics cannot reproduce"
            )
        return projection

    def workers(self) -> list[str]:
        """Web URLs of every worker of the group (this one included)."""
        return sorted({*self.engine.assignor.hosts, self.engine.settings.web_url})

    def status(self, table: str) -> dict[str, Any]:
        """The latest rebuild of ``table`` here (state ``idle`` when none ran)."""
        self.projection(table)
        rebuild = self.rebuilds.get(table)
        body = (
            rebuild.status()
            if rebuild is not None
            else {"table": table, "state": RebuildState.IDLE.value}
        )
        return {**body, "worker": self.engine.settings.web_url, "workers": self.workers()}

    def start(self, table: str) -> Rebuild:
        """Start rebuilding ``table``'s partitions owned by this worker."""
        projection = self.projection(table)
        current = self.rebuilds.get(table)
        if current is not None and current.state == RUNNING:
            raise RebuildRunningError(
                f"a rebuild of {table!r} is already running on {self.engine.settings.web_url} "
                f"(since {iso_time(current.started_at)}); follow it with GET /admin/rebuild/{table}"
            )
        if not self.engine.ready:
            raise RebuildUnavailableError(
                "partitions are being assigned on this worker; retry the rebuild shortly"
            )
        rebuild = Rebuild(table)
        self.rebuilds[table] = rebuild
        rebuild.task = asyncio.get_running_loop().create_task(
            self._run(rebuild, projection), name=f"rebuild-{table}"
        )
        return rebuild

    async def abort_all(self, reason: str) -> None:
        """Abort every running rebuild and wait for its clean-up (engine hook)."""
        running = [r for r in self.rebuilds.values() if r.task is not None and not r.task.done()]
        for rebuild in running:
            rebuild.reason = reason
            assert rebuild.task is not None
            rebuild.task.cancel()
        if running:
            await asyncio.wait(
                [r.task for r in running if r.task is not None], timeout=ABORT_WAIT_SECONDS
            )

    # -- the rebuild ---------------------------------------------------------

    async def _run(self, rebuild: Rebuild, projection: Projection) -> None:
        """Replay, switch, and record how it ended; clean up what was not switched."""
        table = rebuild.table
        live = self.engine.live_stores(table)
        shadows: dict[int, PartitionStore] = {}
        consumer = self.reader(table)
        logger.info("rebuild of %s started for partitions %s", table, sorted(live))
        try:
            for p in live:
                path = self.shadow_path(table, p)
                shutil.rmtree(path, ignore_errors=True)  # left by a crash
                shadows[p] = PartitionStore(path, self.engine.rocksdb)
            await consumer.start()
            await self._seek_to_beginning(consumer, rebuild, projection, live)
            await self._replay(consumer, rebuild, projection, live, shadows)
            async with self.engine.exclusive():
                await self._finish(consumer, rebuild, projection, live, shadows)
            self._ended(rebuild, SWITCHED)
        except (asyncio.CancelledError, _Aborted) as exc:
            self._ended(rebuild, ABORTED, rebuild.reason or str(exc) or "cancelled")
        except Exception as exc:
            self._ended(rebuild, FAILED, exc)
        finally:
            await self._clean_up(consumer, rebuild, shadows)

    async def _replay(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Rebuild,
        projection: Projection,
        live: dict[int, PartitionStore],
        shadows: dict[int, PartitionStore],
    ) -> None:
        """Apply the sources until at most one batch is left to the live position."""
        rebuild.phase = RebuildPhase.REPLAYING
        gap = self.engine.settings.batch_max_records
        next_log = time.monotonic() + PROGRESS_LOG_SECONDS
        while True:
            self._refresh_targets(rebuild, live)
            if rebuild.remaining <= gap:
                return
            await self._step(consumer, rebuild, projection, shadows)
            if time.monotonic() >= next_log:
                logger.info("rebuild of %s: %s", rebuild.table, rebuild.progress())
                next_log = time.monotonic() + PROGRESS_LOG_SECONDS
            await asyncio.sleep(0)  # let the live engine and queries in

    async def _finish(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Rebuild,
        projection: Projection,
        live: dict[int, PartitionStore],
        shadows: dict[int, PartitionStore],
    ) -> None:
        """Apply the last records up to the live position and switch (the engine
        is held still by the caller)."""
        rebuild.phase = RebuildPhase.SWITCHING
        self._refresh_targets(rebuild, live)
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while rebuild.remaining > 0:
            if time.monotonic() > deadline:
                raise RebuildError(
                    f"could not apply the last {rebuild.remaining:,} records within "
                    f"{FINISH_TIMEOUT_SECONDS:.0f}s while the live model waited"
                )
            await self._step(consumer, rebuild, projection, shadows)
        await self._switch(rebuild, projection, live, shadows)

    def _ended(self, rebuild: Rebuild, state: RebuildState, why: str | Exception = "") -> None:
        """Record and log how the rebuild ended."""
        rebuild.state = state
        table = rebuild.table
        if state is SWITCHED:
            logger.info(
                "rebuild of %s switched: %s; %d keys and %d tombstones written to %s in %.1fs; "
                "queries use the rebuilt model",
                table,
                rebuild.progress(),
                rebuild.changelog_records,
                rebuild.tombstones,
                self.engine.changelog_topic(table),
                rebuild.elapsed,
            )
        elif state is ABORTED:
            rebuild.reason = str(why)
            logger.warning(
                "rebuild of %s aborted: %s; the live read model is unchanged", table, why
            )
        elif isinstance(why, RebuildError):
            rebuild.reason = str(why)
            logger.error("rebuild of %s failed: %s", table, why)
        else:
            rebuild.reason = f"{type(why).__name__}: {why}"
            logger.error(
                "rebuild of %s failed", table, exc_info=why if isinstance(why, Exception) else None
            )

    async def _clean_up(
        self, consumer: AIOKafkaConsumer, rebuild: Rebuild, shadows: dict[int, PartitionStore]
    ) -> None:
        """Stop the consumer; remove the shadows unless they became the live stores."""
        rebuild.phase = RebuildPhase.DONE
        rebuild.finished = time.monotonic()
        rebuild.finished_at = time.time()
        try:
            await consumer.stop()
        except Exception as exc:  # a failed start leaves nothing to stop
            logger.debug("rebuild consumer stop: %s", exc)
        if rebuild.state is not SWITCHED:
            for p, shadow in shadows.items():
                try:
                    shadow.destroy()
                except Exception:  # closed already
                    shutil.rmtree(self.shadow_path(rebuild.table, p), ignore_errors=True)
        with contextlib.suppress(OSError):  # absent, or not empty
            self.shadow_path(rebuild.table, 0).parent.rmdir()

    async def _seek_to_beginning(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Rebuild,
        projection: Projection,
        live: dict[int, PartitionStore],
    ) -> None:
        tps = [TopicPartition(s, p) for p in live for s in projection.sources]
        if not tps:
            return
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            applied = live[tp.partition].offset(tp.topic)
            if starts[tp] > 0:
                raise RebuildError(
                    f"{tp.topic}[{tp.partition}] begins at offset {starts[tp]}: the events "
                    "before it were deleted, and a model rebuilt without them would be wrong; "
                    "event topics must keep their history (retention.ms=-1)"
                )
            if applied >= ends[tp]:
                raise RebuildError(
                    f"the live {rebuild.table}[{tp.partition}] has applied {tp.topic} up to "
                    f"offset {applied}, but the topic ends at {ends[tp]}: was it recreated?"
                )
            consumer.seek(tp, starts[tp])
            rebuild.partitions[tp] = PartitionProgress(starts[tp], starts[tp], applied + 1)

    def _refresh_targets(self, rebuild: Rebuild, live: dict[int, PartitionStore]) -> None:
        """Move the targets to the live stores' applied offsets; abort if a store moved."""
        for p, store in live.items():
            if self.engine.stores.get((rebuild.table, p)) is not store:
                raise _Aborted(f"partition {p} of {rebuild.table} was closed or reopened")
        for tp, progress in rebuild.partitions.items():
            progress.target = live[tp.partition].offset(tp.topic) + 1

    async def _step(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Rebuild,
        projection: Projection,
        shadows: dict[int, PartitionStore],
    ) -> None:
        """Fetch once from the partitions behind their target and apply what came."""
        behind = [tp for tp, p in rebuild.partitions.items() if p.position < p.target]
        caught_up = [tp for tp in rebuild.partitions if tp not in behind]
        if caught_up:
            consumer.pause(*caught_up)
        if not behind:
            return
        consumer.resume(*behind)
        got = await consumer.getmany(
            *behind, timeout_ms=200, max_records=self.engine.settings.batch_max_records
        )
        for tp, records in got.items():
            self._apply(consumer, rebuild, projection, shadows[tp.partition], tp, records)

    def _apply(
        self,
        consumer: AIOKafkaConsumer,
        rebuild: Rebuild,
        projection: Projection,
        shadow: PartitionStore,
        tp: TopicPartition,
        records: list[ConsumerRecord[Any, Any]],
    ) -> None:
        progress = rebuild.partitions[tp]
        ctx = BatchContext(Transaction(shadow))  # its outputs and sends are dropped
        last = -1
        for record in records:
            if record.offset >= progress.target:  # beyond the live model: read it later
                consumer.seek(tp, record.offset)
                break
            try:
                projection.apply(ctx, record)
                rebuild.applied += 1
            except EventError:
                rebuild.invalid += 1
            except Exception as exc:
                rebuild.failed += 1
                if rebuild.failed <= 10:
                    logger.warning(
                        "rebuild of %s: %s[%d]@%d failed, skipped: %s: %s",
                        rebuild.table,
                        tp.topic,
                        tp.partition,
                        record.offset,
                        type(exc).__name__,
                        exc,
                    )
            last = record.offset
        if last >= 0:
            ctx.tx.applied(tp.topic, last)
            ctx.tx.commit()
            progress.position = last + 1

    async def _switch(
        self,
        rebuild: Rebuild,
        projection: Projection,
        live: dict[int, PartitionStore],
        shadows: dict[int, PartitionStore],
    ) -> None:
        """Make the shadows the live stores (the caller holds the engine still)."""
        engine = self.engine
        for p, store in live.items():
            offsets = {}
            for source in projection.sources:
                for topic in (source, retry_topic(source)):
                    if store.offset(topic) >= 0:
                        offsets[topic] = store.offset(topic)
            offsets[SEQ] = next_seq(store.offsets())  # the switch is the live store's next batch
            shadows[p].write(dict(store.raw_items(STATE_PREFIX)), offsets)
        last = await engine.write_changelog(
            rebuild.table,
            {p: self._switch_records(rebuild, store, shadows[p]) for p, store in live.items()},
        )
        for p, shadow in shadows.items():
            shadow.write({}, {CHANGELOG: last[p]})
        # No await from here on: queries never see a closed store.
        for p, store in live.items():
            shadow = shadows[p]
            path, rebuilt = store.path, shadow.path
            store.close()
            shadow.close()
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            rebuilt.rename(path)
            engine.replace_store(rebuild.table, p, PartitionStore(path, engine.rocksdb))
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _switch_records(
        rebuild: Rebuild, live: PartitionStore, shadow: PartitionStore
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """The changelog records that replace a partition's live state with the
        shadow's: every shadow key, a tombstone per live key the shadow lacks,
        then the offsets record."""
        count = 0
        for key, raw in shadow.raw_items():
            rebuild.changelog_records += 1
            count += 1
            yield key, raw
        for key, _ in live.raw_items():
            if key not in shadow:
                rebuild.tombstones += 1
                count += 1
                yield key, None
        yield offsets_record(shadow.offsets(), count)

    def reader(self, table: str) -> AIOKafkaConsumer:
        """The rebuild's own consumer of the source topics (no group, no commits)."""
        return AIOKafkaConsumer(
            **aiokafka_options(self.engine.settings),
            client_id=f"{self.engine.group_id}-rebuild-{table}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

"""Every Prometheus metric of a worker, in one place.

Built from an injected :class:`~prometheus_client.CollectorRegistry` (a fresh
one by default), with Prometheus naming (``_total`` counters, ``_seconds``
durations, base units) and explicit histogram buckets. The projection engine
calls the hooks below once per batch or per partition of a batch, never per
event: counts are summed by the engine in local integers, the end-to-end
latency is observed for a uniform sample of each batch's records (at most
:data:`LATENCY_SAMPLES` per batch, every record of small batches), and
per-event processing time is the batch's time divided by its size.

Served as ``GET /metrics`` on the worker's web port (``streams/views.py``);
the command API can serve its own registry with :func:`exposition`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the text exposition format."""

LATENCY_SAMPLES = 32
"""Most records per batch whose end-to-end latency is observed (a uniform stride)."""

OUTCOMES = ("applied", "skipped_duplicate_offset", "invalid")
"""Values of the ``outcome`` label of ``eventide_events_total``."""

LATENCY_BUCKETS = (
    *(0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1),
    *(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
"""Bounds of the end-to-end latency histogram: fine below 100 ms, where the
latency targets lie, so that a p50 of 8 ms and one of 20 ms are told apart."""
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
EVENT_SECONDS_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)


SAGA_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


BRIDGE_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class BridgeMetrics:
    """``eventide bridge rabbitmq``'s metrics (streams/rabbitmq.py), counted per batch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bridged = Counter(
            "eventide_rabbitmq_bridged",
            "RabbitMQ messages published to Kafka, acknowledged there, then acked on "
            "RabbitMQ (a message redelivered after a crash counts again).",
            registry=registry,
        )
        self.rejected = Counter(
            "eventide_rabbitmq_rejected",
            "RabbitMQ messages rejected to the dead-letter exchange (and recorded in the "
            "Kafka DLQ), by reason: the error class.",
            ["reason"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "eventide_rabbitmq_ack_seconds",
            "From a message's delivery to the bridge to its ack on RabbitMQ (after Kafka "
            "acknowledged its record).",
            buckets=BRIDGE_ACK_BUCKETS,
            registry=registry,
        )


class SagaMetrics:
    """The order saga's metrics (agents/saga.py), counted as its records are applied
    (a batch replayed after a crash counts again)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sagas = Counter(
            "eventide_sagas",
            "Order sagas by what happened: started, completed, compensated (failed and "
            "fully compensated), timed_out (a step's deadline passed), ignored_reply "
            "(a duplicate, late or out-of-order reply, recorded and ignored).",
            ["outcome"],
            registry=registry,
        )
        self.step_seconds = Histogram(
            "eventide_saga_step_seconds",
            "From a saga command's record timestamp to its success reply's, per step.",
            ["step"],
            buckets=SAGA_STEP_BUCKETS,
            registry=registry,
        )

    def count(self, outcome: str) -> None:
        """One saga ``outcome`` (started, completed, compensated, timed_out, ignored_reply)."""
        self.sagas.labels(outcome).inc()

    def step(self, step: str, ms: int) -> None:
        """A forward step answered successfully after ``ms`` milliseconds."""
        self.step_seconds.labels(step).observe(ms / 1000)


class EngineMetrics:
    """The worker's metrics and the hooks the projection engine calls."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Declare every metric of the worker on ``registry`` (a fresh one by default).

        Kept in one piece (about 100 lines): it is the list of the worker's
        metrics, one declaration each with its name, help text, labels and
        buckets; there is no logic to split out.
        """
        fresh = registry is None
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        if fresh:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, fds
        self.events = Counter(
            "eventide_events",
            "Events read by the projections, by outcome: applied, skipped_duplicate_offset "
            "(at or below the offset the store already applied) or invalid (bad input).",
            ["projection", "topic", "outcome"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "eventide_batch_processing_seconds",
            "Wall time of one projection batch: apply, encode, send, complete the batch before.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.event_seconds = Histogram(
            "eventide_event_processing_seconds",
            "Processing time per event: each batch's wall time divided by its records.",
            buckets=EVENT_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "eventide_batch_records",
            "Records per projection batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "eventide_end_to_end_latency_seconds",
            "From an event's Kafka record timestamp to its read-model update being written "
            f"to RocksDB; a uniform sample of at most {LATENCY_SAMPLES} records per batch.",
            ["topic"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "eventide_consumer_lag_records",
            "Log end offset minus the offset the projections have applied to RocksDB (committed "
            "to the group in the background; the position before the first batch), per "
            "assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_refreshed = Gauge(
            "eventide_consumer_lag_refreshed_timestamp_seconds",
            "Unix time of the last successful consumer lag refresh.",
            registry=r,
        )
        self.retries = Counter(
            "eventide_retries",
            "Events sent to a retry topic after a handler failed.",
            ["projection", "topic"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "eventide_dead_lettered",
            "Events sent to a dead-letter topic, by reason: invalid (bad input), key (no "
            "Kafka key, or not the event's entity id), exhausted (retries exhausted).",
            ["projection", "topic", "reason"],
            registry=r,
        )
        self.sagas = SagaMetrics(r)
        """The order saga's counters and step latency."""
        self.rebalances = Counter(
            "eventide_rebalances",
            "Rebalance callbacks of the projections' consumer: assigned or revoked.",
            ["kind"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "eventide_assigned_partitions",
            "Source partitions currently assigned to this worker's projections.",
            registry=r,
        )
        self.recovery_seconds = Gauge(
            "eventide_recovery_seconds",
            "Duration of the last assignment: opening the stores and replaying their "
            "changelogs until the worker was ready.",
            registry=r,
        )
        self.restored = Counter(
            "eventide_changelog_restored_records",
            "Changelog records replayed into local stores during recovery.",
            registry=r,
        )
        self.changelog = Counter(
            "eventide_changelog_records",
            "Records written to table changelogs (one per key per batch, plus offsets).",
            ["table"],
            registry=r,
        )
        self._tables = _TableKeys()
        r.register(self._tables)
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._samples: dict[int, list[tuple[str, list[int]]]] = {}
        self._committed: dict[TopicPartition, int] = {}

    # -- engine hooks (per batch / per partition of a batch) -----------------

    def watch_stores(self, stores: Mapping[tuple[str, int], Any]) -> None:
        """Report ``eventide_table_keys`` from the engine's live ``(table, partition)`` stores."""
        self._tables.stores = stores

    def partition_done(
        self, projection: str, topic: str, records: int, skipped: int, invalid: int
    ) -> None:
        """Count one partition's records of a batch by outcome."""
        children = self._children.get((projection, topic))
        if children is None:
            applied_, skip_, bad_ = (self.events.labels(projection, topic, o) for o in OUTCOMES)
            children = self._children[(projection, topic)] = (applied_, skip_, bad_)
        applied, skip, bad = children
        applied.inc(records - skipped - invalid)
        if skipped:
            skip.inc(skipped)
        if invalid:
            bad.inc(invalid)

    def changelog_written(self, table: str, records: int) -> None:
        """Count records sent to ``table``'s changelog for one batch."""
        self.changelog.labels(table).inc(records)

    def batch_processed(
        self, batch: Mapping[Any, list[Any]], token: object, started: float
    ) -> None:
        """One batch sent (``started``: its ``time.perf_counter()`` at the beginning).

        Samples the records' timestamps for :meth:`batch_committed`; ``token``
        identifies the batch (the engine's in-flight object).
        """
        elapsed = time.perf_counter() - started
        size = 0
        for records in batch.values():
            size += len(records)
        if size == 0:
            return
        self.batch_records.observe(size)
        self.batch_seconds.observe(elapsed)
        self.event_seconds.observe(elapsed / size)
        stride = max(1, size // LATENCY_SAMPLES)
        samples = [
            (tp.topic, [r.timestamp for r in records[::stride]]) for tp, records in batch.items()
        ]
        if len(self._samples) > 8:  # batches that failed before completing
            self._samples.clear()
        self._samples[id(token)] = samples

    def batch_committed(self, token: object) -> None:
        """The batch ``token`` reached RocksDB: observe its sampled end-to-end latencies."""
        samples = self._samples.pop(id(token), None)
        if not samples:
            return
        now_ms = time.time() * 1000.0
        for topic, stamps in samples:
            child = self.latency.labels(topic)
            for ts in stamps:
                child.observe(max(0.0, now_ms - ts) / 1000.0)

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Offsets committed for the projections' group (next offset to read)."""
        self._committed.update(offsets)

    def assigned(self, partitions: int, restored: int, seconds: float) -> None:
        """An assignment finished: partitions added, changelog records replayed, duration."""
        self.rebalances.labels("assigned").inc()
        self.assigned_partitions.inc(partitions)
        self.restored.inc(restored)
        self.recovery_seconds.set(seconds)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked: forget their lag and committed offsets."""
        self.rebalances.labels("revoked").inc()
        for tp in partitions:
            self.assigned_partitions.dec()
            self._committed.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.lag.remove(tp.topic, str(tp.partition))

    # -- failure handling (fed by the retry/DLQ router) ----------------------

    def retried(self, projection: str, topic: str) -> None:
        """One event sent to its retry topic."""
        self.retries.labels(projection, topic).inc()

    def dead_letter(self, projection: str, topic: str, reason: str) -> None:
        """One event sent to its dead-letter topic (``reason``: invalid, key, exhausted)."""
        self.dead_lettered.labels(projection, topic, reason).inc()

    # -- background refresh ---------------------------------------------------

    async def refresh_lag(self, consumer: Any) -> None:
        """Set the lag of every assigned partition from the broker's log end offsets.

        Uses a ListOffsets request (``end_offsets``), so the lag keeps growing
        while the consumer is paused or stuck and fetches nothing. Raises what
        the request raised (the broker is unreachable, or a rebalance is in
        progress): the caller (streams/health.py) counts it as a failed probe.
        """
        if consumer is None:
            return
        assignment = sorted(consumer.assignment())
        if not assignment:
            return
        ends = await consumer.end_offsets(assignment)
        for tp in assignment:
            done = self._committed.get(tp)
            if done is None:
                done = await consumer.position(tp)
            self.lag.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - done))
        self.lag_refreshed.set(time.time())

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return exposition(self.registry)


def exposition(registry: CollectorRegistry) -> bytes:
    """``registry`` in the Prometheus text format (content type :data:`CONTENT_TYPE`)."""
    return generate_latest(registry)


class _TableKeys(Collector):
    """``eventide_table_keys``: RocksDB's estimate of keys, summed per table."""

    def __init__(self) -> None:
        self.stores: Mapping[tuple[str, int], Any] = {}

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "eventide_table_keys",
            "Keys in each table's local partitions (RocksDB rocksdb.estimate-num-keys; "
            "includes one metadata key per partition).",
            labels=["table"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        totals: dict[str, int] = {}
        for (table, _), store in list(self.stores.items()):
            db = getattr(store, "_db", None)
            try:
                keys = db.property_int_value("rocksdb.estimate-num-keys") if db else None
            except Exception:  # closed meanwhile
                keys = None
            totals[table] = totals.get(table, 0) + (keys or 0)
        for table, keys in sorted(totals.items()):
            family.add_metric([table], keys)
        yield family

"""Re-keying for producers that key by anything else: ``eventide bridge kafka --from <topic>``.

Eventide's event topics are keyed by entity id (DESIGN.md), and a projection
dead-letters a record keyed otherwise (:class:`~streams.exceptions.RecordKeyError`):
its partition does not own the entity. A producer that keys by event id, or
by nothing, publishes to an ingest topic of its own instead; this bridge
consumes it in a consumer group, decodes and validates each event with the
registry-checked codec, and publishes the same bytes and headers to the
Eventide topic that carries the event's name (the catalogue's ``events``
pattern), keyed and partitioned by the entity id. A record that is not a
valid event, or that no Eventide topic carries, goes to ``<ingest>.dlq``
with the reason in its ``dlq-*`` headers.

Delivery: the group's offsets are committed only once every record of the batch
is acknowledged (acks=all, idempotent producer), so nothing is lost if the
bridge dies at any moment; a batch redone after a crash publishes its events
again, which the projections absorb by event id. Order: the events of one
entity keep the order they had *within one partition of the ingest topic*;
events of one entity spread over several ingest partitions have no order
between them (a producer that needs per-entity order must key by entity id).
Several bridges may run for the same ingest topic: the group shares its
partitions among them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from schemas.exceptions import EventError, ValidationError

from .catalogue import CATALOGUE, TopicSpec, key_of
from .failures import dead_letter_headers, dlq_topic
from .kafka_clients import aiokafka_options
from .outputs import KeyPartitioner
from .settings import Settings
from .topics import create_topics, ensure_topics

logger = logging.getLogger(__name__)


class UnroutableEventError(EventError):
    """A valid event that no Eventide topic carries."""


class EventRouter:
    """Where an event from outside goes: the Eventide topic that carries its name,
    keyed and partitioned by its entity id (shared by the Kafka and RabbitMQ bridges)."""

    def __init__(self, settings: Settings, codec: EventCodec | None = None) -> None:
        self.codec = codec or EventCodec(limits=settings.limits)
        """The registry-checked codec every event is validated with."""
        self.targets = [(s, settings.topic(s.name)) for s in CATALOGUE if s.events]
        self.partitioner = KeyPartitioner(settings.partitions)

    def decode(self, value: bytes, headers: Any) -> Envelope:
        """The validated event of a record value; :class:`EventError` when it is none."""
        return self.codec.decode(value, headers)

    def route(self, event: Envelope) -> tuple[str, bytes, int]:
        """(topic, key, partition) of ``event``; :class:`EventError` when it has no
        entity id or no Eventide topic carries it."""
        try:
            key = key_of(event).encode()
        except ValueError as exc:
            raise ValidationError("data", "the entity id the event is keyed by", None) from exc
        for spec, topic in self.targets:
            if spec.carries(event.name):
                return topic, key, self.partitioner(key)
        carried = ", ".join(p for spec, _ in self.targets for p in spec.events)
        raise UnroutableEventError(
            f"name: no Eventide topic carries {event.name} events (topics carry {carried})"
        )


class RekeyBridge:
    """Moves events from an ingest topic keyed by anything to the entity-keyed topics."""

    def __init__(self, settings: Settings, source: str, codec: EventCodec | None = None) -> None:
        self.settings = settings
        self.ingest = source
        """The ingest topic's name without the prefix."""
        self.source = settings.topic(source)
        """The ingest topic (with EVENTIDE_TOPIC_PREFIX)."""
        self.group = f"{settings.app_id}-rekey-{source}"
        """The bridges' consumer group for this ingest topic."""
        self.router = EventRouter(settings, codec)
        self.bridged = 0
        self.rejected = 0

    def route(self, record: Any) -> tuple[str, bytes, int]:
        """(topic, key, partition) of an ingest record's event; :class:`EventError`
        when it is not a valid event or no Eventide topic carries it."""
        return self.router.route(self.router.decode(record.value, record.headers))

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; create the ingest topic and its DLQ if missing."""
        settings = self.settings
        await ensure_topics(settings)
        await self._ensure_ingest_topics()
        consumer = AIOKafkaConsumer(
            self.source,
            **aiokafka_options(settings),
            group_id=self.group,
            client_id=f"{self.group}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(
            **aiokafka_options(settings),
            client_id=f"{self.group}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await producer.start()
        await consumer.start()
        logger.info("bridging %s → entity-keyed topics (group %s)", self.source, self.group)
        reported = time.monotonic()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                if not batch:
                    continue
                offsets = await self._forward(producer, batch)
                await consumer.commit(offsets)
                if time.monotonic() - reported >= 10:
                    reported = time.monotonic()
                    logger.info("bridged %d events, rejected %d", self.bridged, self.rejected)
        finally:
            await consumer.stop()
            await producer.stop()
            logger.info("stopped: bridged %d events, rejected %d", self.bridged, self.rejected)

    async def _forward(
        self, producer: AIOKafkaProducer, batch: dict[Any, list[Any]]
    ) -> dict[Any, int]:
        """Send every record of ``batch`` on; return the offsets to commit once all are acked."""
        sends = []
        offsets = {}
        dlq = dlq_topic(self.source)
        for tp, records in batch.items():
            for record in records:
                headers = list(record.headers)
                try:
                    topic, key, partition = self.route(record)
                except EventError as exc:
                    now = int(time.time() * 1000)
                    logger.warning(
                        "rejected %s[%d]@%d: %s: %s (sent to %s)",
                        record.topic,
                        record.partition,
                        record.offset,
                        type(exc).__name__,
                        exc,
                        dlq,
                    )
                    headers = dead_letter_headers(record, exc, 0, now, now)
                    sends.append(
                        await producer.send(dlq, record.value, record.key, headers=headers)
                    )
                    self.rejected += 1
                    continue
                sends.append(
                    await producer.send(topic, record.value, key, partition, headers=headers)
                )
                self.bridged += 1
            offsets[tp] = records[-1].offset + 1
        await asyncio.gather(*sends)
        return offsets

    async def _ensure_ingest_topics(self) -> None:
        """Create the ingest topic (EVENTIDE_PARTITIONS) and its DLQ when missing; an
        existing ingest topic keeps its partition count, whatever it is."""
        admin = AIOKafkaAdminClient(**aiokafka_options(self.settings))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
        finally:
            await admin.close()
        missing = [
            TopicSpec(name, "anything", "events to re-key", consumed=False)
            for name in (self.ingest, dlq_topic(self.ingest))
            if self.settings.topic(name) not in existing
        ]
        if missing:
            await create_topics(self.settings, missing)


async def run_bridge(settings: Settings, source: str) -> None:
    """``eventide bridge kafka``: bridge ``source`` until SIGINT/SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await RekeyBridge(settings, source).run(stop)

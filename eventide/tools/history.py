"""``eventide history <entity-id>``: an entity's events in order, read from Kafka.

Every event of an entity has the entity id as its key, so all of them are in
one partition of its topic, in the order they were published. The partition
is the one the default partitioner (murmur2 of the key) picks; only it is
read, from the beginning to its end offset at the time of the call.

Records are decoded as a worker decodes them (:meth:`EventCodec.decode`):
Avro or JSON by their ``content-type`` header or first byte, checked against
the schema registry, data in the shape of the event's newest schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner

from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from schemas.exceptions import EventError
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.exceptions import BrokerError
from streams.kafka_clients import aiokafka_options, check_kafka
from streams.settings import Settings


@dataclass(frozen=True)
class HistoryEntry:
    """One event of an entity and where it is on the log."""

    topic: str
    """Topic it was read from."""
    partition: int
    """Partition of the entity's key."""
    offset: int
    """Offset in that partition."""
    event: Envelope | None
    """The event, or None when the record could not be decoded."""
    error: str | None = None
    """Why the record could not be decoded."""


def decode_record(
    codec: EventCodec, value: bytes | None, headers: Iterable[tuple[str, Any]] | None = None
) -> tuple[Envelope | None, str | None]:
    """The event of one record, or None and why it could not be decoded."""
    try:
        return codec.decode(value, headers), None
    except EventError as exc:
        return None, str(exc)


async def entity_history(
    settings: Settings,
    entity_id: str,
    topics: list[str] | None = None,
    codec: EventCodec | None = None,
) -> list[HistoryEntry]:
    """Every record keyed ``entity_id`` on the entity event topics, in log order.

    ``codec``: the decoder (default: one under the settings' limits).
    """
    codec = codec if codec is not None else EventCodec(limits=settings.limits)
    names = topics or [settings.topic(spec.name) for spec in (USER_EVENTS, ORDER_EVENTS)]
    await check_kafka(settings, topics=names, purpose="eventide-history")
    key = entity_id.encode()
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings),
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-history",
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise BrokerError(
            f"cannot reach Kafka at {settings.broker_url} (EVENTIDE_BROKER_URL): {exc}"
        ) from exc
    entries: list[HistoryEntry] = []
    try:
        counts = await _partition_counts(settings, names)
        for topic in names:
            partitions = list(range(counts.get(topic, 0)))
            if not partitions:
                continue
            part = DefaultPartitioner()(key, partitions, partitions)
            tp = TopicPartition(topic, part)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.key != key or record.offset >= end:
                        continue
                    event, error = decode_record(codec, record.value, record.headers)
                    entries.append(HistoryEntry(topic, part, record.offset, event, error))
    finally:
        await consumer.stop()
    return entries


async def _partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [t for t in topics if t in existing]
        described = await admin.describe_topics(present) if present else []
        return {meta["topic"]: len(meta["partitions"]) for meta in described}
    finally:
        await admin.close()

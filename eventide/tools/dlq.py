"""Dead-letter topics: list, inspect and replay their records (``eventide dlq``).

A record is named ``<dlq topic>:<partition>:<offset>``. Replaying sends the
original key, value and headers (the ``dlq-*`` headers removed) back to the
origin topic, keyed as before so it lands on the same partition; the
projections' deduplication by event id makes a second replay harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codecs import EventCodec
from streams.catalogue import CATALOGUE, RABBITMQ_BRIDGE_DLQ
from streams.exceptions import BrokerError
from streams.failures import DLQ_HEADERS, DLQ_SUFFIX
from streams.kafka_clients import aiokafka_options, check_kafka
from streams.settings import Settings

from .history import decode_record


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic."""

    topic: str
    """The DLQ topic."""
    partition: int
    """Its partition."""
    offset: int
    """Its offset."""
    key: bytes | None
    """The original key."""
    value: bytes | None
    """The original value, untouched."""
    headers: tuple[tuple[str, bytes], ...]
    """The original headers followed by the dlq-* headers."""

    @property
    def ref(self) -> str:
        """``topic:partition:offset``, the name ``dlq show`` and ``dlq replay`` take."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        """A header's value as text ('' when absent)."""
        for k, v in self.headers:
            if k == name:
                return v.decode(errors="replace")
        return ""

    @property
    def origin_topic(self) -> str:
        """The topic the record was consumed from."""
        return self.header("dlq-origin-topic") or self.topic.removesuffix(DLQ_SUFFIX)

    @property
    def error_class(self) -> str:
        """Class name of the error that dead-lettered it."""
        return self.header("dlq-error-class")

    @property
    def last_failure(self) -> datetime | None:
        """When it last failed."""
        ms = self.header("dlq-last-failure")
        return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms.isdigit() else None

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers as the producer sent them."""
        return [(k, v) for k, v in self.headers if k not in DLQ_HEADERS]

    def value_lines(self, codec: EventCodec) -> list[str]:
        """How ``eventide dlq show`` prints the value: the event decoded by the
        registry-checked codec (Avro records too) in its JSON form, or why it
        cannot be decoded followed by the raw value."""
        event, error = decode_record(codec, self.value, self.original_headers())
        if event is not None:
            return [f"event    {codec.encode_json(event).decode()}"]
        raw = (self.value or b"").decode(errors="replace")
        return [f"decode   {error}", f"value    {raw}"]


def dlq_topics(settings: Settings) -> list[str]:
    """The dead-letter topics of the catalogue's consumed topics, and the RabbitMQ
    bridge's (``rabbitmq-bridge.dlq``)."""
    topics = [settings.topic(s.name) + DLQ_SUFFIX for s in CATALOGUE if s.consumed]
    return [*topics, settings.topic(RABBITMQ_BRIDGE_DLQ.name)]


async def read_dead_letters(
    settings: Settings,
    topics: Iterable[str] | None = None,
    error_class: str | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """Every record currently in the given DLQ topics (default: all), filtered."""
    await check_kafka(settings, topics=list(topics or ()), purpose="eventide-dlq")
    consumer = AIOKafkaConsumer(**aiokafka_options(settings), enable_auto_commit=False)
    await consumer.start()
    found: list[DeadLetter] = []
    try:
        existing = await consumer.topics()
        names = [t for t in (topics or dlq_topics(settings)) if t in existing]
        tps = [TopicPartition(t, p) for t in names for p in range(settings.partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        todo = {tp for tp in tps if ends[tp] > starts[tp]}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    found.append(
                        DeadLetter(
                            tp.topic, tp.partition, r.offset, r.key, r.value, tuple(r.headers)
                        )
                    )
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return [
        d
        for d in found
        if (error_class is None or d.error_class == error_class)
        and (since is None or (d.last_failure is not None and d.last_failure >= since))
    ]


async def replay(
    settings: Settings,
    letters: list[DeadLetter],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send each record back to its origin topic; returns how many were sent.

    Records that came from RabbitMQ (``eventide bridge rabbitmq``) have no Kafka
    origin: they are refused (:class:`~streams.exceptions.BrokerError`), to be
    fixed and published on RabbitMQ again."""
    amqp = sorted({d.origin_topic for d in letters if d.origin_topic.startswith("rabbitmq:")})
    if amqp:
        raise BrokerError(
            f"cannot replay records that came from RabbitMQ ({', '.join(amqp)}): they "
            "have no Kafka origin topic; fix them and publish them on the exchange again"
        )
    await check_kafka(
        settings, topics=sorted({d.origin_topic for d in letters}), purpose="eventide-dlq"
    )
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for d in letters:
            await producer.send_and_wait(
                d.origin_topic, d.value, key=d.key, headers=d.original_headers()
            )
            if progress:
                progress(1)
    finally:
        await producer.stop()
    return len(letters)

"""What the engine needs of Kafka, as protocols, and the aiokafka implementation.

The batch engine (streams/engine.py) and its batch commit
(streams/checkpoint.py) talk to Kafka only through these protocols:

- a :class:`Consumer` of the projections' group (``getmany``, ``seek``,
  ``pause``/``resume``, offset ``commit``/``committed``);
- a :class:`RecordSender` that collects records per partition and hands them
  over in whole batches (:meth:`RecordSender.submit`), whose :class:`Acks` tell
  the offset of the last record per partition once acknowledged;
- a :class:`ChangelogReader` that replays one changelog partition to its end.

:class:`KafkaTransport` builds them on aiokafka from the settings
(``EVENTIDE_KAFKA_CLIENT=aiokafka``); :class:`~streams.confluent_transport.ConfluentTransport`
on librdkafka (the default). Both read changelogs, and give standbys and rebuilds
their readers, through :class:`KafkaReaders` (aiokafka). The unit tests drive
the engine with an in-memory transport (tests/unit/streams/).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from .assignor import HostAwareRangeAssignor
from .catalogue import TopicSpec
from .kafka_clients import aiokafka_options
from .outputs import BatchSender
from .settings import Settings
from .topics import create_topics


class Acks(Protocol):
    """Records handed to the producer, awaiting their acknowledgements."""

    async def acknowledged(self) -> dict[tuple[str, int], int]:
        """Wait for every ack; return the offset of the last record per (topic, partition)."""
        ...


class RecordSender(Protocol):
    """Collects records per (topic, partition), in order, and sends them in batches.

    Ordering guarantee: records added for one partition are written to it in
    the order they were added, across submits.
    """

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Add a record; no I/O."""
        ...

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Add a record; a full batch is handed to the producer at once (long writes)."""
        ...

    async def submit(self) -> Acks:
        """Hand everything added to the producer; the acknowledgements come later."""
        ...

    async def flush(self) -> dict[tuple[str, int], int]:
        """Submit and wait for every acknowledgement."""
        ...


class Consumer(Protocol):
    """What the engine uses of its group consumer: aiokafka's ``AIOKafkaConsumer``, or
    :class:`~streams.confluent_consumer.ConfluentConsumer`. The records of ``getmany``
    have ``topic partition offset key value headers timestamp``; a failed ``commit``
    of a group that has moved on raises aiokafka's ``CommitFailedError``."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...


class ChangelogReader(Protocol):
    """Reads a changelog partition from an offset up to its end at the time of the call."""

    def read(
        self, topic: str, partition: int, start: int
    ) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
        """Batches of records in offset order, from ``start`` to the end offset."""
        ...


class Transport(ChangelogReader, Protocol):
    """Everything the engine needs of Kafka."""

    @property
    def consumer(self) -> Consumer | None:
        """The group consumer (None before :meth:`start`)."""
        ...

    @property
    def sender(self) -> RecordSender | None:
        """The batching producer (None before :meth:`start`)."""
        ...

    async def start(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        """Connect, create missing changelog topics, subscribe the consumer."""
        ...

    async def stop(self) -> None:
        """Leave the group and close the clients."""
        ...


def instance_id(settings: Settings) -> str:
    """The worker's static group membership id (``group.instance.id``).

    Kafka accepts only ASCII letters, digits, ``.``, ``_`` and ``-`` there (at
    most 249 characters), so the web address is spelled with those.
    """
    raw = f"{settings.projection_group}-{settings.web_host}-{settings.web_port}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:249]


class KafkaReaders:
    """Consumers outside the group, on aiokafka: the changelog reader of
    recoveries (:meth:`read`) and the readers of standbys and rebuilds (:meth:`reader`)."""

    settings: Settings

    @property
    def group_id(self) -> str:
        return self.settings.projection_group

    def reader(self, purpose: str) -> AIOKafkaConsumer:
        """A consumer outside the group (manual assignment, no commits)."""
        return AIOKafkaConsumer(
            **aiokafka_options(self.settings),
            client_id=f"{self.group_id}-{purpose}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    _restorer: AIOKafkaConsumer | None = None
    _restoring: asyncio.Lock | None = None

    async def read(
        self, topic: str, partition: int, start: int
    ) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
        """The records of one partition from ``start`` to its end offset as of now.

        Every restore of the worker reads through one reader, connected once:
        on a TLS + SCRAM cluster a connection costs a handshake and an
        authentication, and an assignment restores tens of partitions inside the
        rebalance callback, where a slow start would cost the group membership.
        """
        if self._restoring is None:
            self._restoring = asyncio.Lock()
        async with self._restoring:
            reader = self._restorer
            if reader is None:
                reader = self.reader("restore")
                await reader.start()
                self._restorer = reader
            tp = TopicPartition(topic, partition)
            reader.assign([tp])
            try:
                end = (await reader.end_offsets([tp]))[tp]
                if start >= end:
                    return
                reader.seek(tp, start)
                position = start
                while position < end:
                    got = await reader.getmany(tp, timeout_ms=1000, max_records=20_000)
                    records = [r for r in got.get(tp, []) if r.offset < end]
                    if records:
                        position = records[-1].offset + 1
                        yield records
            finally:
                reader.assign([])

    async def close_readers(self) -> None:
        """Close the restore reader (the transport is stopping)."""
        reader, self._restorer = self._restorer, None
        if reader is not None:
            await reader.stop()


class KafkaTransport(KafkaReaders):
    """The engine's Kafka clients on aiokafka (``EVENTIDE_KAFKA_CLIENT=aiokafka``): an
    idempotent producer (acks=all) behind a :class:`~streams.outputs.BatchSender`, and
    a group consumer with static membership, manual commits and the host-aware assignor."""

    def __init__(
        self,
        settings: Settings,
        assignor: HostAwareRangeAssignor,
        changelogs: Sequence[TopicSpec] = (),
    ) -> None:
        self.settings = settings
        self.assignor = assignor
        self.changelogs = tuple(changelogs)
        """Changelog topics created (compacted) before the clients start."""
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.sender: BatchSender | None = None

    async def start(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        settings = self.settings
        if self.changelogs:
            await create_topics(settings, self.changelogs)
        self.producer = AIOKafkaProducer(
            **aiokafka_options(settings),
            client_id=f"{self.group_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # the engine hands over whole batches: lingering only adds latency
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await self.producer.start()
        self.sender = BatchSender(self.producer)
        self.consumer = AIOKafkaConsumer(
            **aiokafka_options(settings),
            client_id=f"{self.group_id}-consumer",
            group_id=self.group_id,
            # Static membership: a restarted worker takes its partitions back
            # at once instead of waiting out the old member's session.
            group_instance_id=instance_id(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(self.assignor,),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            max_poll_interval_ms=300_000,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 4),
        )
        await self.consumer.start()
        self.consumer.subscribe(list(topics), listener=listener)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()  # leaves the group: partitions move at once
        if self.producer is not None:
            await self.producer.stop()
        await self.close_readers()

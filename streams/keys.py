"""Customers' data keys: the KEK from the settings, the wrapped keys on Kafka.

The wrapped data keys live on the compacted ``pii-keys`` topic
(:data:`~streams.catalogue.PII_KEYS`), keyed ``<customerId>/<keyId>`` and
partitioned by customerId, so every worker, the command API and the CLI read
the same keys. A :class:`KafkaKeyStore` reads the topic from the beginning
into a :class:`~schemas.personal.KeyRing` and follows it; unwrapped keys stay
in that process's memory only.

- Writers (the API, the demo) call :meth:`KeyStore.key_for`: the customer's
  newest key, or a new one published (acks=all) before any event uses it.
- ``eventide forget <customerId>`` (:meth:`KeyStore.forget`) publishes a
  tombstone for each of the customer's keys and a ``<customerId>/forgotten``
  marker; every keyring that reads them drops the keys from memory.
  Compaction then removes the wrapped keys from the broker's disk.
- ``eventide keys rotate`` (:meth:`KeyStore.rotate`) re-wraps every key not
  wrapped by the current KEK; events are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from schemas.exceptions import KekError, PersonalDataError
from schemas.personal import (
    DataKey,
    KekRing,
    KeyRing,
    forgotten_record,
    is_encrypted,
    key_record,
    new_kek_line,
    personal_fields,
)
from schemas.registry import Registry

from .catalogue import PII_KEYS
from .kafka_clients import aiokafka_options
from .outputs import KeyPartitioner
from .settings import Settings
from .topics import create_topics

logger = logging.getLogger(__name__)


class KeyStoreUnavailableError(PersonalDataError):
    """The keys topic could not be read or written in time; retry later."""

    retriable = True


def load_keks(settings: Settings) -> KekRing:
    """The KEKs of EVENTIDE_PII_KEK, else of the KEK file.

    With neither set, a development KEK is generated into
    ``<state_dir>/pii-kek`` (mode 0600) the first time; every process with the
    same state dir shares it. Raises :class:`KekError` naming the setting.
    """
    inline = settings.pii_kek.reveal()
    if inline:
        return KekRing.parse(inline, "EVENTIDE_PII_KEK")
    path = settings.pii_kek_path
    where = f"EVENTIDE_PII_KEK_FILE ({path})"
    if not path.exists():
        if settings.pii_kek_file:
            raise KekError(f"{where}: no such file; create it or unset EVENTIDE_PII_KEK_FILE")
        _generate(path)
    try:
        return KekRing.parse(path.read_text(), where)
    except OSError as exc:
        raise KekError(f"{where}: cannot read it: {exc}") from exc


def _generate(path: Path) -> None:
    """Write a new development KEK file at ``path`` unless another process did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Eventide development KEK (generated); the first line is the current one\n")
        f.write(new_kek_line(f"dev-{datetime.now(UTC):%Y%m%d}") + "\n")
    try:
        os.link(tmp, path)  # atomic: exactly one process's file wins
        logger.warning("generated a development KEK in %s (set EVENTIDE_PII_KEK(_FILE))", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PersonalFields:
    """Which payload fields of which events are personal (``"personal": true``)."""

    def __init__(self, registry: Registry) -> None:
        self.by_event = personal_fields((e.name, e.payload) for e in registry)
        """Event name → its personal field names."""

    def encrypt(self, key: DataKey, event_name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with the event's personal string fields encrypted with ``key``."""
        out = dict(data)
        for name in self.by_event.get(event_name, ()):
            value = out.get(name)
            if isinstance(value, str) and not is_encrypted(value):
                out[name] = key.encrypt(name, value)
        return out


class KeyStore:
    """A :class:`KeyRing` and where its records are published; in memory here
    (unit tests), on Kafka in :class:`KafkaKeyStore`."""

    def __init__(self, keks: KekRing) -> None:
        self.ring = KeyRing(keks)
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Start reading the keys (nothing to read in memory)."""

    async def stop(self) -> None:
        """Stop reading and writing."""

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the keys published before this store started are read."""

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once every key published before this call is read."""
        await self.wait_ready(timeout)

    async def publish(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        """Publish (customer id, key, value) records, in order; apply them locally."""
        for _, key, value in records:
            self.ring.apply(key, value)

    async def key_for(self, customer_id: str) -> DataKey:
        """The customer's newest data key; a new one, published first, if none."""
        await self.wait_ready()
        lock = self._locks.setdefault(customer_id, asyncio.Lock())
        async with lock:
            key = self.ring.current_key(customer_id)
            if key is None:
                key = DataKey.generate(customer_id)
                k, v = key_record(self.ring.keks.current, key, _now())
                await self.publish([(customer_id, k, v)])
                logger.info("new data key %s for customer %s", key.key_id, customer_id)
        if len(self._locks) > 10_000:
            self._locks.clear()
        return key

    async def forget(self, customer_id: str) -> int:
        """Destroy the customer's data keys; returns how many there were."""
        await self.sync()
        ids = self.ring.key_ids(customer_id)
        records: list[tuple[str, bytes, bytes | None]] = [
            (customer_id, f"{customer_id}/{k}".encode(), None) for k in ids
        ]
        records.append((customer_id, *forgotten_record(customer_id, _now())))
        await self.publish(records)
        return len(ids)

    async def rotate(self) -> int:
        """Re-wrap with the current KEK every key wrapped by another; returns how many."""
        await self.sync()
        current = self.ring.keks.current
        records: list[tuple[str, bytes, bytes | None]] = []
        for customer_id, key_id, wrapped in self.ring.records():
            if wrapped["kek"] == current.kek_id:
                continue
            key = self.ring.data_key(customer_id, key_id)
            k, v = key_record(current, key, _now())
            records.append((customer_id, k, v))
        await self.publish(records)
        return len(records)


class KafkaKeyStore(KeyStore):
    """The keys topic read from the beginning into the ring, then followed."""

    def __init__(self, settings: Settings, keks: KekRing | None = None) -> None:
        super().__init__(keks if keks is not None else load_keks(settings))
        self.settings = settings
        self.topic = settings.topic(PII_KEYS.name)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitioner: KeyPartitioner | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._waiters: list[asyncio.Event] = []

    async def start(self) -> None:
        """Start following the topic in the background (does not wait for Kafka)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None

    async def _connect(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings),
            client_id=f"{self.settings.app_id}-pii-keys",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            if self.topic not in await consumer.topics():
                # A command API started before any worker or `eventide topics`.
                await create_topics(self.settings, [PII_KEYS])
            # Created by ensure_topics with EVENTIDE_PARTITIONS partitions, like every topic.
            tps = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._partitioner = KeyPartitioner(len(tps))
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _follow(self) -> None:
        targets: tuple[dict[TopicPartition, int], list[asyncio.Event]] | None = None
        while True:
            try:
                if self._consumer is None:
                    self._consumer = await self._connect()
                consumer = self._consumer
                if targets is None and (not self._caught_up.is_set() or self._waiters):
                    waiting, self._waiters = self._waiters, []
                    ends = await consumer.end_offsets(list(consumer.assignment()))
                    targets = (ends, waiting)
                batch = await consumer.getmany(
                    timeout_ms=100 if targets else 1000, max_records=10_000
                )
                for records in batch.values():
                    for r in records:
                        try:
                            self.ring.apply(r.key, r.value)
                        except PersonalDataError as exc:
                            logger.error(
                                "%s[%d]@%d skipped: %s", r.topic, r.partition, r.offset, exc
                            )
                if targets is not None:
                    ends, waiting = targets
                    positions = [await consumer.position(tp) for tp in ends]
                    if all(p >= end for p, end in zip(positions, ends.values(), strict=True)):
                        targets = None
                        if not self._caught_up.is_set():
                            logger.info("read %d data keys from %s", len(self.ring), self.topic)
                            self._caught_up.set()
                        for event in waiting:
                            event.set()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, PersonalDataError) as exc:
                logger.warning("keys topic %s: %s; retrying", self.topic, exc)
                if targets is not None:
                    self._waiters.extend(targets[1])
                    targets = None
                if self._consumer is not None:
                    with contextlib.suppress(Exception):
                        await self._consumer.stop()
                    self._consumer = None
                await asyncio.sleep(1.0)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the topic is read up to where it ended when this store
        started reading it."""
        if self._task is None:
            await self.start()
        if self._caught_up.is_set():
            return
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            raise KeyStoreUnavailableError(
                f"the data keys on topic {self.topic!r} could not be read within {timeout:g} s "
                f"from {self.settings.broker_url}; retry when Kafka answers"
            ) from None

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once every key published before this call is read."""
        await self.wait_ready(timeout)
        done = asyncio.Event()
        self._waiters.append(done)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            raise KeyStoreUnavailableError(
                f"topic {self.topic!r} could not be read to its end within {timeout:g} s"
            ) from None

    async def publish(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        if not records:
            return
        try:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **aiokafka_options(self.settings),
                    client_id=f"{self.settings.app_id}-pii-keys",
                    acks="all",
                    enable_idempotence=True,
                )
                await producer.start()
                self._producer = producer
            assert self._partitioner is not None  # set once the topic was read
            futures = [
                await self._producer.send(
                    self.topic, value, key=key, partition=self._partitioner(customer.encode())
                )
                for customer, key, value in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KeyStoreUnavailableError(
                f"could not publish {len(records)} record(s) to {self.topic!r}: "
                f"{type(exc).__name__}: {exc}; retry when Kafka answers"
            ) from exc
        await super().publish(records)


class KeyRingService(Service):
    """Runs a :class:`KafkaKeyStore` inside the worker (started with the Faust app)."""

    def __init__(self, store: KeyStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store

    async def on_start(self) -> None:
        await self.store.start()

    async def on_stop(self) -> None:
        await self.store.stop()

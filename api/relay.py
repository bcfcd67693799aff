"""The outbox relay: publishes committed events to Kafka, in order per entity.

With ``EVENTIDE_RELAY_TARGET=rabbitmq`` it publishes them to a RabbitMQ topic
exchange instead (:class:`~streams.rabbitmq.RabbitPublisher`: routing key =
event name, persistent, a row marked published only after its publisher confirm).

Loop: claim a batch of pending rows (only this relay gets rows of those
entities until the claim closes), send them with an idempotent producer
(``acks=all``, ``enable_idempotence``), mark the acknowledged ones published,
close the claim. Rows not acknowledged stay pending and are sent again later
with the same event id, so a crash or a broker outage can duplicate an event
but never lose one. Per entity only the acknowledged prefix of the batch is
marked, so a retry never puts an entity's later event before an earlier one.

On PostgreSQL a relay runs :attr:`~api.store.OutboxStore.parallel_claims`
claims at once, each on its own connection and shards: while one batch waits
for Kafka's acknowledgement the next is read and sent, which halves the time
a committed row waits. Per-entity order holds because an entity's rows are in
one shard and a shard is held by one claim at a time.

Published rows and idempotency answers are deleted after
``EVENTIDE_OUTBOX_RETENTION`` seconds. Metrics (:class:`~api.metrics.RelayMetrics`):
published events, batches, publish lag, backlog, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.exceptions import BrokerError, KafkaSecurityError
from streams.kafka_clients import aiokafka_options, check_kafka
from streams.rabbitmq import RabbitPublisher
from streams.settings import Settings
from streams.topics import ensure_topics

from .metrics import RelayMetrics, new_registry
from .store import Claim, OutboxRow, OutboxStore

logger = logging.getLogger(__name__)


@dataclass
class RelayStats:
    """What a relay has done; lags are kept for the last ``window`` rows."""

    published: int = 0
    """Rows acknowledged by Kafka and marked published."""
    failed_batches: int = 0
    """Batches in which at least one send failed (those rows are retried)."""
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    """Seconds from a row's commit to Kafka's acknowledgement."""


class OutboxRelay:
    """One relay; several may run against the same database."""

    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        relay_id: str | None = None,
        metrics: RelayMetrics | None = None,
    ):
        self.settings = settings
        self.store = store
        self.relay_id = relay_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = RelayStats()
        self.metrics = metrics if metrics is not None else RelayMetrics(new_registry())
        self._held: set[int] = set()
        """Shards held by this relay's open claims (PostgreSQL), skipped by its next claim."""
        self._last_backlog = 0.0
        self._wakeup = asyncio.Event()
        self._commits = 0
        """Commits announced by :meth:`wake`: a lane that saw one during its claim
        claims again at once instead of waiting."""
        self._producer: AIOKafkaProducer | RabbitPublisher | None = None
        self._last_cleanup = 0.0

    def wake(self) -> None:
        """Called after a commit: publish now instead of at the next poll."""
        self._commits += 1
        self._wakeup.set()

    def _new_producer(self) -> AIOKafkaProducer | RabbitPublisher:
        if self.settings.relay_target == "rabbitmq":
            return RabbitPublisher(self.settings)
        return AIOKafkaProducer(
            **aiokafka_options(self.settings),
            client_id=f"{self.settings.app_id}-relay",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            request_timeout_ms=15_000,
        )

    async def preflight(self) -> None:
        """Fail now if Kafka refuses this relay (TLS, SASL, ACLs on the topics it
        writes): raises :class:`~streams.exceptions.KafkaSecurityError`. A broker
        that does not answer is only logged: the relay waits for it."""
        try:
            await check_kafka(self.settings, topics=self.topics, purpose="relay")
        except BrokerError as exc:
            logger.warning("relay: %s; publishing once it answers", exc)

    @property
    def topics(self) -> list[str]:
        """The topics the relay writes (the API's commands become events there)."""
        return [self.settings.topic(spec.name) for spec in (USER_EVENTS, ORDER_EVENTS)]

    @property
    def target(self) -> str:
        """Where the relay publishes (EVENTIDE_RELAY_TARGET), for logs."""
        s = self.settings
        if s.relay_target == "rabbitmq":
            return f"RabbitMQ exchange {s.rabbitmq_exchange} at {s.rabbitmq_url}"
        return f"Kafka at {s.broker_url}"

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Create the topics and start a producer, retrying while Kafka is away.

        A refusal (credentials, certificate, ACLs) is not retried: it raises
        :class:`~streams.exceptions.KafkaSecurityError`, which stops the relay.
        """
        delay = 0.5
        while not stop.is_set():
            producer = self._new_producer()
            try:
                if self.settings.relay_target == "kafka":
                    await check_kafka(self.settings, topics=self.topics, purpose="relay")
                    await ensure_topics(self.settings)
                await producer.start()
                self._producer = producer
                logger.info("relay %s connected to %s", self.relay_id, self.target)
                return True
            except KafkaSecurityError:
                await producer.stop()
                self.metrics.errors.labels("connect").inc()
                raise
            except Exception as exc:
                await producer.stop()
                self.metrics.errors.labels("connect").inc()
                logger.warning(
                    "relay cannot reach %s (%s); retrying in %.1fs", self.target, exc, delay
                )
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, 5.0)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; survives broker outages and store hiccups."""
        logger.info("relay %s started on %r", self.relay_id, self.store)
        try:
            if not await self._connect(stop):
                return
            await self.store.listen(self.wake)
            while not stop.is_set():
                failed = await self._publish_loop(stop)
                if failed and not stop.is_set():
                    await self._reset_producer(stop)
        finally:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
            await self.store.release(self.relay_id)
            logger.info("relay %s stopped: %d published", self.relay_id, self.stats.published)

    async def _publish_loop(self, stop: asyncio.Event) -> bool:
        """Claim and publish with ``parallel_claims`` lanes until ``stop`` or a
        failed send (True: the producer needs a reset)."""
        lanes = max(1, self.store.parallel_claims)
        broken = asyncio.Event()

        async def lane(n: int) -> None:
            if n:
                # Start the lanes out of step so they take turns with the broker.
                await _sleep_or_stop(stop, 0.002 * n)
            while not stop.is_set() and not broken.is_set():
                commits = self._commits
                try:
                    sent, failed = await self.publish_once()
                except Exception:
                    logger.exception("relay batch failed; retrying")
                    self.metrics.errors.labels("store").inc()
                    sent, failed = 0, 1
                if failed:
                    broken.set()
                    return
                if n == 0:
                    await self._maybe_cleanup()
                    await self._maybe_refresh_backlog()
                if sent == 0 and commits == self._commits:
                    await self._idle(stop, broken)

        await asyncio.gather(*(lane(n) for n in range(lanes)))
        return broken.is_set()

    async def _idle(self, stop: asyncio.Event, broken: asyncio.Event) -> None:
        """Wait for a commit (``wake``), ``stop`` or the poll interval."""
        self._wakeup.clear()
        waiters = {asyncio.ensure_future(e.wait()) for e in (self._wakeup, stop, broken)}
        await asyncio.wait(
            waiters, timeout=self.settings.relay_poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()

    async def _maybe_refresh_backlog(self) -> None:
        now = time.monotonic()
        if now - self._last_backlog < 1.0:
            return
        self._last_backlog = now
        try:
            self.metrics.backlog.set(await self.store.pending_count())
        except Exception as exc:  # a metric is not worth stopping the relay for
            logger.warning("relay: cannot count the outbox backlog: %s", exc)

    async def _reset_producer(self, stop: asyncio.Event) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await _sleep_or_stop(stop, 1.0)
        await self._connect(stop)

    async def publish_once(self) -> tuple[int, int]:
        """One batch: returns (rows marked published, rows whose send failed)."""
        claimed = self.store.claim(
            self.relay_id, self.settings.relay_batch_size, exclude=frozenset(self._held)
        )
        async with claimed as claim:
            if not claim.rows:
                return 0, 0
            self._held.update(claim.shards)
            try:
                return await self._publish(claim)
            finally:
                self._held.difference_update(claim.shards)

    async def _publish(self, claim: Claim) -> tuple[int, int]:
        producer = self._producer
        assert producer is not None
        sent: list[tuple[OutboxRow, asyncio.Future[object]]] = []
        error: BaseException | None = None
        codec = self.store.codec
        for row in claim.rows:
            try:
                # The contract's headers, from the event the codec reads back from the row.
                headers = codec.headers(codec.decode_json(row.value))
                fut = await producer.send(
                    row.topic, row.value, key=row.key.encode(), headers=headers
                )
            except Exception as exc:
                error = exc
                break
            sent.append((row, fut))
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        acked_at = time.time()
        broken: set[str] = set()
        ok: list[OutboxRow] = []
        for (row, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                error = error or result
                broken.add(row.key)
            elif row.key not in broken:
                ok.append(row)
        claim.mark_published([row.id for row in ok])
        self.stats.published += len(ok)
        lags = [acked_at - row.created_at for row in ok]
        self.stats.lags.extend(lags)
        metrics = self.metrics
        metrics.published.inc(len(ok))
        metrics.batches.inc()
        metrics.batch_rows.observe(len(claim.rows))
        observe = metrics.lag.observe
        for lag in lags:
            observe(lag)
        failed = len(claim.rows) - len(ok)
        if failed:
            self.stats.failed_batches += 1
            metrics.errors.labels("send").inc()
            logger.warning(
                "relay: %d of %d rows not acknowledged (%s: %s); they stay pending",
                failed,
                len(claim.rows),
                type(error).__name__,
                error,
            )
        return len(ok), failed

    async def _maybe_cleanup(self) -> None:
        retention = self.settings.outbox_retention
        interval = min(60.0, max(0.5, retention / 2))
        now = time.time()
        if now - self._last_cleanup < interval:
            return
        self._last_cleanup = now
        deleted = await self.store.cleanup(now - retention)
        if deleted:
            logger.info("relay: deleted %d published rows older than %ss", deleted, retention)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_relay(settings: Settings) -> None:
    """``eventide relay``: run a relay until SIGINT/SIGTERM, with its metrics on
    ``EVENTIDE_RELAY_METRICS_PORT`` (0: not served)."""
    import signal

    from prometheus_client import start_http_server

    from .store import store_for

    registry = new_registry()
    if settings.relay_metrics_port:
        try:
            start_http_server(settings.relay_metrics_port, settings.api_host, registry=registry)
            logger.info(
                "relay metrics on http://%s:%d/metrics",
                settings.api_host,
                settings.relay_metrics_port,
            )
        except OSError as exc:
            # Another relay on this host has the port: publishing matters more.
            logger.warning(
                "relay metrics not served: port %d (EVENTIDE_RELAY_METRICS_PORT): %s; "
                "give each relay on a host its own port",
                settings.relay_metrics_port,
                exc,
            )
    store = store_for(settings)
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await OutboxRelay(settings, store, metrics=RelayMetrics(registry)).run(stop)
    finally:
        await store.close()

"""RabbitMQ in: ``eventide bridge rabbitmq`` moves events from a RabbitMQ queue to Kafka.

Producers that already publish on RabbitMQ (a durable ``topic`` exchange,
routing key = event name, persistent messages) keep doing so. The bridge
declares the exchange (EVENTIDE_RABBITMQ_EXCHANGE), a durable queue
(EVENTIDE_RABBITMQ_QUEUE) bound to it with the patterns of
EVENTIDE_RABBITMQ_BINDINGS, and a dead-letter exchange with a durable queue
where rejected messages are kept. It consumes with manual acks and a prefetch
of EVENTIDE_RABBITMQ_PREFETCH messages, validates each body with the
registry-checked codec and publishes it, untouched, to the Eventide topic that
carries the event's name, keyed by the entity id (the routing of
:class:`~streams.rekey.EventRouter`, shared with ``eventide bridge kafka``).

Delivery: a batch (at most the prefetch) is produced with an idempotent
acks=all producer; once Kafka acknowledged every record of it, the bridge acks
the batch on RabbitMQ with one ``multiple`` ack. A bridge that dies at any
moment leaves its unacked messages to RabbitMQ, which delivers them again (to
another bridge on the queue, or after a restart); the events published twice
are absorbed downstream by event-id deduplication. A RabbitMQ connection lost
after start-up is retried with back-off (:func:`bridge_until_stopped`); the
messages it had not acked come again on the new connection. Order: per queue only, and
with several bridges on one queue (competing consumers) not even that.

Invalid input (not an envelope, an unknown event, a schema violation, a
routing key other than the event's name, an event no topic carries) is
recorded in the Kafka topic ``rabbitmq-bridge.dlq`` with the reason in its
``dlq-*`` headers, then rejected without requeue: RabbitMQ moves it to the
dead-letter exchange, whose queue keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, NamedTuple

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
)
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from schemas.content_type import CONTENT_TYPE_AVRO
from schemas.envelope import CONTENT_TYPE_JSON
from schemas.exceptions import EventError

from .catalogue import RABBITMQ_BRIDGE_DLQ
from .exceptions import BrokerError
from .failures import dead_letter_headers
from .kafka_clients import aiokafka_options
from .metrics import BridgeMetrics
from .rekey import EventRouter
from .settings import Settings
from .topics import ensure_topics

logger = logging.getLogger(__name__)

LINGER = 0.005
"""Seconds a batch smaller than the prefetch waits once for more messages."""


class RoutingKeyError(EventError):
    """A message whose routing key is not the name of the event in its body."""


class AmqpRecord(NamedTuple):
    """A RabbitMQ message, in the shape the dead-letter helpers read."""

    topic: str
    """``rabbitmq:<queue>``: not a Kafka topic (``eventide dlq replay`` refuses it)."""
    partition: int
    """Always -1: a queue has no partitions."""
    offset: int
    """The delivery tag (of this channel, for the record only)."""
    headers: list[tuple[str, bytes]]
    """The message's AMQP headers, and its routing key, exchange and message id."""


RECONNECT_FIRST_S = 1.0
"""The bridge's first wait before reconnecting to a RabbitMQ it lost; doubled each
failed attempt, up to :data:`RECONNECT_MAX_S`."""
RECONNECT_MAX_S = 30.0


class RabbitMQUnavailable(BrokerError):
    """RabbitMQ refused the connection, or closed or lost it."""


async def connect(settings: Settings) -> AbstractConnection:
    """A connection to EVENTIDE_RABBITMQ_URL; :class:`RabbitMQUnavailable` naming it
    when refused."""
    try:
        return await aio_pika.connect(settings.rabbitmq_url.reveal(), timeout=10)
    except Exception as exc:
        raise RabbitMQUnavailable(
            f"cannot reach RabbitMQ at {settings.rabbitmq_url} (EVENTIDE_RABBITMQ_URL): "
            f"{type(exc).__name__}: {exc or 'no answer'}; is it running? "
            "`eventide rabbitmq start` starts the dev node"
        ) from exc


async def declare_exchange(settings: Settings, channel: AbstractChannel) -> AbstractExchange:
    """The durable topic exchange events are published to (EVENTIDE_RABBITMQ_EXCHANGE)."""
    return await channel.declare_exchange(
        settings.rabbitmq_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )


async def declare_bridge_queue(settings: Settings, channel: AbstractChannel) -> AbstractQueue:
    """The exchange, the dead-letter exchange and its queue, and the bridge's
    queue bound with EVENTIDE_RABBITMQ_BINDINGS; returns the bridge's queue."""
    exchange = await declare_exchange(settings, channel)
    dlx = await channel.declare_exchange(
        settings.rabbitmq_dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(settings.rabbitmq_dead_letter_queue, durable=True)
    await dlq.bind(dlx)
    queue = await channel.declare_queue(
        settings.rabbitmq_queue,
        durable=True,
        arguments={"x-dead-letter-exchange": settings.rabbitmq_dead_letter_exchange},
    )
    for pattern in settings.rabbitmq_binding_keys:
        await queue.bind(exchange, routing_key=pattern)
    return queue


def _text(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class RabbitBridge:
    """Moves events from a RabbitMQ queue to the entity-keyed Kafka topics."""

    def __init__(
        self,
        settings: Settings,
        metrics: BridgeMetrics,
        router: EventRouter | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = router or EventRouter(settings)
        self.dlq = settings.topic(RABBITMQ_BRIDGE_DLQ.name)
        """The Kafka topic of rejected messages (with EVENTIDE_TOPIC_PREFIX)."""
        self.inbox: asyncio.Queue[tuple[DeliveredMessage, float] | None] = asyncio.Queue()
        self._raw: RawChannel | None = None
        """The consuming channel's aiormq channel: deliveries without aio-pika's
        message objects (a third less CPU per message), acks and rejects."""
        self.lost: BaseException | None = None
        self.consuming = False
        self.bridged = 0
        self.rejected = 0

    def route(self, message: DeliveredMessage) -> tuple[str, bytes, int, list[Any]]:
        """(topic, key, partition, Kafka headers) of a message's event;
        :class:`EventError` when it is not a valid event for its routing key."""
        content_type = message.header.properties.content_type or None
        headers = [("content-type", content_type.encode())] if content_type else None
        event = self.router.decode(message.body, headers)
        if message.routing_key != event.name:
            raise RoutingKeyError(
                f"routing key {message.routing_key!r} is not the event's name {event.name!r} "
                "(publish each event with its name as routing key)"
            )
        topic, key, partition = self.router.route(event)
        if content_type is None:
            content_type = CONTENT_TYPE_AVRO if message.body[:1] == b"\0" else CONTENT_TYPE_JSON
        return topic, key, partition, self.router.codec.headers(event, content_type)

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; raise :class:`RabbitMQUnavailable` when
        RabbitMQ cannot be reached or the connection is lost, :class:`BrokerError`
        when Kafka cannot be reached. ``consuming`` tells whether it got as far as
        consuming the queue."""
        settings = self.settings
        connection = await connect(settings)
        try:
            await ensure_topics(settings)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.rabbitmq_prefetch)
            queue = await declare_bridge_queue(settings, channel)
            connection.close_callbacks.add(self._closed)
            channel.close_callbacks.add(self._closed)
            producer = AIOKafkaProducer(
                **aiokafka_options(settings),
                client_id=f"{settings.app_id}-rabbitmq-bridge",
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
            )
            await producer.start()
            try:
                self._raw = await channel.get_underlay_channel()
                await self._raw.basic_consume(queue.name, self._received, no_ack=False)
                self.consuming = True
                logger.info(
                    "bridging RabbitMQ queue %s (exchange %s, bindings %s) → Kafka",
                    settings.rabbitmq_queue,
                    settings.rabbitmq_exchange,
                    settings.rabbitmq_bindings,
                )
                await self._loop(producer, stop)
            finally:
                await producer.stop()
        finally:
            await connection.close()
            logger.info("stopped: bridged %d messages, rejected %d", self.bridged, self.rejected)

    async def _received(self, message: DeliveredMessage) -> None:
        self.inbox.put_nowait((message, time.monotonic()))

    def _closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionError("closed")
            self.inbox.put_nowait(None)

    async def _loop(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        reported = time.monotonic()
        while not stop.is_set():
            batch = await self._next_batch()
            if batch is None:
                if stop.is_set():
                    return
                raise RabbitMQUnavailable(
                    f"lost the connection to RabbitMQ at {self.settings.rabbitmq_url} "
                    f"(EVENTIDE_RABBITMQ_URL): {self.lost}; its unacked messages are "
                    "delivered again to the next bridge"
                )
            if batch:
                try:
                    await self._forward(producer, batch)
                except KafkaError as exc:
                    raise BrokerError(
                        f"Kafka at {self.settings.broker_url} (EVENTIDE_BROKER_URL) did not "
                        f"acknowledge a batch: {type(exc).__name__}: {exc}; its messages stay "
                        "unacked on RabbitMQ, which delivers them again to the next bridge"
                    ) from exc
            if time.monotonic() - reported >= 10:
                reported = time.monotonic()
                logger.info("bridged %d messages, rejected %d", self.bridged, self.rejected)

    async def _next_batch(self) -> list[tuple[DeliveredMessage, float]] | None:
        """Up to the prefetch of delivered messages; [] after 0.5 s without any,
        None once the connection is gone."""
        try:
            first = await asyncio.wait_for(self.inbox.get(), 0.5)
        except TimeoutError:
            return []
        if first is None:
            return None
        batch = [first]
        for attempt in range(2):
            while len(batch) < self.settings.rabbitmq_prefetch and not self.inbox.empty():
                item = self.inbox.get_nowait()
                if item is None:
                    return None
                batch.append(item)
            if attempt == 0 and len(batch) < self.settings.rabbitmq_prefetch:
                await asyncio.sleep(LINGER)
        return batch

    async def _forward(
        self, producer: AIOKafkaProducer, batch: list[tuple[DeliveredMessage, float]]
    ) -> None:
        """Produce every message of ``batch``; once Kafka acknowledged all, reject the
        invalid ones and ack the rest with one ``multiple`` ack."""
        sends = []
        rejected: list[tuple[DeliveredMessage, EventError]] = []
        last_valid = None
        for message, _ in batch:
            try:
                topic, key, partition, headers = self.route(message)
            except EventError as exc:
                rejected.append((message, exc))
                sends.append(await self._dead_letter(producer, message, exc))
                continue
            sends.append(await producer.send(topic, message.body, key, partition, headers=headers))
            last_valid = message
        await asyncio.gather(*sends)
        raw = self._raw
        assert raw is not None
        try:
            for message, error in rejected:
                await raw.basic_reject(message.delivery_tag or 0, requeue=False)
                self.metrics.rejected.labels(type(error).__name__).inc()
            if last_valid is not None:
                await raw.basic_ack(last_valid.delivery_tag or 0, multiple=True)
        except (AMQPError, ChannelInvalidStateError) as exc:  # closed under the batch
            raise RabbitMQUnavailable(
                f"lost the connection to RabbitMQ at {self.settings.rabbitmq_url} "
                f"(EVENTIDE_RABBITMQ_URL) before acking a batch of {len(batch)} messages "
                f"already in Kafka: {type(exc).__name__}: {exc}; RabbitMQ delivers them "
                "again, and the read models absorb the repeats by event id"
            ) from exc
        now = time.monotonic()
        observe = self.metrics.ack_seconds.observe
        for _, received in batch:
            observe(now - received)
        valid = len(batch) - len(rejected)
        self.metrics.bridged.inc(valid)
        self.bridged += valid
        self.rejected += len(rejected)

    async def _dead_letter(
        self, producer: AIOKafkaProducer, message: DeliveredMessage, exc: EventError
    ) -> Any:
        """Send ``message`` to the Kafka DLQ with the reason; returns the send's future."""
        properties = message.header.properties
        logger.warning(
            "rejected message %s (routing key %s): %s: %s (sent to %s and %s)",
            properties.message_id,
            message.routing_key,
            type(exc).__name__,
            exc,
            self.dlq,
            self.settings.rabbitmq_dead_letter_exchange,
        )
        amqp = [(str(k), _text(v)) for k, v in (properties.headers or {}).items()]
        amqp += [
            ("rabbitmq-routing-key", _text(message.routing_key or "")),
            ("rabbitmq-exchange", _text(message.exchange or "")),
            ("rabbitmq-message-id", _text(properties.message_id or "")),
        ]
        record = AmqpRecord(
            f"rabbitmq:{self.settings.rabbitmq_queue}", -1, message.delivery_tag or 0, amqp
        )
        now = int(time.time() * 1000)
        headers = dead_letter_headers(record, exc, 0, now, now)
        key = _text(message.routing_key or "")
        return await producer.send(self.dlq, message.body, key, headers=headers)


class RabbitPublisher:
    """RabbitMQ out: publishes events to the topic exchange (EVENTIDE_RABBITMQ_EXCHANGE)
    for the outbox relay, with the relay's producer calls (``start``, ``send``, ``stop``).

    Each message: routing key = event name, persistent, message id = event id,
    content type and the event's headers as AMQP headers. The channel runs in
    publisher-confirm mode: the future :meth:`send` returns completes only once
    RabbitMQ confirmed the message (and fails on a negative confirm), so the
    relay marks a row published after the confirm only. Messages of one channel
    keep their order, so each entity's events arrive in outbox order.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        """Connect and declare the exchange; :class:`BrokerError` naming the URL when refused."""
        self._connection = await connect(self.settings)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await declare_exchange(self.settings, channel)

    async def stop(self) -> None:
        """Close the connection (unconfirmed messages stay unmarked in the outbox)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._exchange = None

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Publish one event (its contract ``headers`` name it); returns the future of
        its publisher confirm. ``topic`` and ``key`` (Kafka's) are not used."""
        assert self._exchange is not None, "start() first"
        amqp = {k: v.decode(errors="replace") for k, v in headers or ()}
        message = aio_pika.Message(
            value,
            content_type=amqp.get("content-type", CONTENT_TYPE_JSON),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=amqp.get("event-id"),
            correlation_id=amqp.get("correlation-id"),
            type=amqp.get("event-name"),
            headers=dict(amqp),
        )
        routing_key = amqp.get("event-name", "")
        return asyncio.ensure_future(self._exchange.publish(message, routing_key=routing_key))


async def run_rabbitmq_bridge(settings: Settings) -> None:
    """``eventide bridge rabbitmq``: bridge until SIGINT/SIGTERM, with metrics on
    EVENTIDE_BRIDGE_METRICS_PORT (0: not served)."""
    import signal

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    if settings.bridge_metrics_port:
        try:
            start_http_server(settings.bridge_metrics_port, settings.api_host, registry=registry)
        except OSError as exc:
            logger.warning(
                "bridge metrics not served: port %d (EVENTIDE_BRIDGE_METRICS_PORT): %s",
                settings.bridge_metrics_port,
                exc,
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await bridge_until_stopped(settings, BridgeMetrics(registry), stop)


async def bridge_until_stopped(
    settings: Settings, metrics: BridgeMetrics, stop: asyncio.Event
) -> None:
    """Run a :class:`RabbitBridge` until ``stop``; reconnect when RabbitMQ is lost.

    A RabbitMQ that cannot be reached at start-up, and Kafka at any time, end
    it with the error (a misconfiguration shows at once). Once it consumed the
    queue, a lost connection is retried, first after :data:`RECONNECT_FIRST_S`,
    then twice as long each failed attempt up to :data:`RECONNECT_MAX_S`, for as
    long as it runs: what it had not acked is delivered again by RabbitMQ.
    """
    delay, started, router = RECONNECT_FIRST_S, False, None
    while not stop.is_set():
        bridge = RabbitBridge(settings, metrics, router)
        router = bridge.router  # one codec and routing table for every connection
        try:
            await bridge.run(stop)
            return
        except RabbitMQUnavailable as exc:
            if bridge.consuming:  # it had started: wait the shortest again
                started, delay = True, RECONNECT_FIRST_S
            elif not started:  # unreachable at start-up
                raise
            logger.warning("%s; reconnecting in %.0f s", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RECONNECT_MAX_S)

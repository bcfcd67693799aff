"""The engine's producer on librdkafka (confluent-kafka): :class:`ConfluentSender`.

aiokafka builds and sends record batches in Python on the event loop;
librdkafka's ``produce`` only copies a record into its queue (well under a
microsecond) and its own threads batch, send and retry. :class:`ConfluentSender`
is the :class:`~streams.transport.RecordSender` on it:

- ``add`` only buffers the record per (topic, partition); ``submit`` hands
  the buffer to ``produce``, partition by partition in the order added, so
  records of one partition reach it in order across submits (the idempotent
  producer keeps that order on the wire, retries included);
- only the *last* record of each (topic, partition) of a submit carries a
  delivery callback (a Python callback per record would cost as much as the
  produce itself). Its offset is what :meth:`Delivery.acknowledged` returns;
- that the last record's ack covers the records before it rests on two
  things. ``enable.gapless.guarantee`` turns any permanent failure of a
  record that would leave a gap before later ones into a fatal producer error,
  which fails every outstanding record (the last ones included) and every
  later :meth:`Delivery.acknowledged`. A record that times out
  (``message.timeout.ms``) is not covered by that guarantee, so
  :meth:`Delivery.acknowledged` gives up, with an error, shortly *before* the
  earliest record of the submit could time out: an ack that arrives in time
  means no record before it timed out;
- a daemon thread polls the producer; the delivery callbacks it runs hand
  their results to the event loop (``call_soon_threadsafe``), so the loop
  never blocks on librdkafka.

Every failure surfaces as a :class:`~streams.exceptions.DeliveryError` from
:meth:`Delivery.acknowledged` (and so from :meth:`ConfluentSender.flush`):
the batch fails, nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from .exceptions import DeliveryError
from .kafka_clients import confluent_options
from .settings import Settings

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT_MS = 120_000
"""librdkafka's ``message.timeout.ms``: how long a record may wait for its ack."""
ACK_MARGIN_S = 5.0
""":meth:`Delivery.acknowledged` gives up this long before a record could time out."""
CHUNK_RECORDS = 50_000
"""Buffered records that :meth:`ConfluentSender.append` hands to the producer at once."""


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """librdkafka settings of the engine's producer (idempotent, acks=all, gap-less)."""
    return {
        **confluent_options(settings),
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        # Experimental in librdkafka (it logs a CONFWARN saying so at start-up),
        # but what lets one ack per partition stand for all the records before it.
        "enable.gapless.guarantee": True,
        # The engine hands over whole batches: waiting for more only adds latency
        # (acks of a 20-record submit: 7-11 ms at 0, 16-24 ms at 2 on the busy
        # 2-core machine; the same CPU per record for 2,000 and 30,000-record submits).
        "linger.ms": 0,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "message.max.bytes": 8 * 1024 * 1024,
        "queue.buffering.max.messages": 1_000_000,
        "logger": logging.getLogger("streams.rdkafka.producer"),
    }


Buffered = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]] | None]


class ConfluentSender:
    """A :class:`~streams.transport.RecordSender` on a ``confluent_kafka.Producer``.

    Build it with :meth:`create` (or around a producer-like object, as the unit
    tests do), and :meth:`close` it when done.
    """

    def __init__(self, producer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._producer = producer
        self._loop = loop
        self._buffer: dict[tuple[str, int], list[Buffered]] = {}
        self._buffered = 0
        self._delivery: Delivery | None = None
        """The current submit's deliveries, while :meth:`append` hands over chunks."""
        self._outstanding: set[Delivery] = set()
        self._producing = asyncio.Lock()
        self.fatal: KafkaError | None = None
        """The producer's fatal error, if one was raised: every later ack fails."""
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None

    @classmethod
    def create(cls, settings: Settings, client_id: str) -> ConfluentSender:
        """A sender on a new producer, polled by its own daemon thread."""
        holder: list[ConfluentSender] = []
        config = producer_config(settings, client_id)
        config["error_cb"] = lambda err: holder[0].on_error(err)
        sender = cls(Producer(config), asyncio.get_running_loop())
        holder.append(sender)
        sender.start_polling()
        return sender

    # -- the RecordSender protocol -------------------------------------------

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Buffer a record (no I/O: :meth:`submit` hands it to the producer)."""
        tp = (topic, partition)
        buffer = self._buffer.get(tp)
        if buffer is None:
            buffer = self._buffer[tp] = []
        buffer.append((key, value, headers or None))
        self._buffered += 1

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Buffer a record; every :data:`CHUNK_RECORDS` go to the producer at once."""
        self.add(topic, partition, key, value, headers)
        if self._buffered >= CHUNK_RECORDS:
            async with self._producing:
                await self._produce_buffered()

    async def submit(self) -> Delivery:
        """Hand everything buffered to the producer; the acks come later."""
        async with self._producing:
            await self._produce_buffered()
            delivery, self._delivery = self._delivery, None
        if delivery is None:
            delivery = Delivery(self, self._loop.time())
        delivery.seal()
        return delivery

    async def flush(self) -> dict[tuple[str, int], int]:
        """Submit and wait for every ack; the offset of the last record per partition."""
        return await (await self.submit()).acknowledged()

    # -- handing records to librdkafka ----------------------------------------

    async def _produce_buffered(self) -> None:
        """Produce the buffer, partition by partition, in the order added; the last
        record of each partition carries the delivery callback."""
        buffer, self._buffer = self._buffer, {}
        self._buffered = 0
        if not buffer:
            return
        delivery = self._delivery
        if delivery is None:
            delivery = self._delivery = Delivery(self, self._loop.time())
            self._outstanding.add(delivery)
        produce = self._producer.produce
        for (topic, partition), records in buffer.items():
            last = len(records) - 1
            for i, (key, value, headers) in enumerate(records):
                callback = delivery.delivered if i == last else None
                while True:
                    try:
                        if headers is None:
                            produce(topic, value, key, partition, callback)
                        else:
                            produce(topic, value, key, partition, callback, None, 0, headers)
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        await asyncio.sleep(0.005)
                    except Exception as exc:
                        raise DeliveryError(
                            f"could not produce to {topic}[{partition}]: {exc}"
                        ) from exc
            delivery.expect()

    # -- polling and errors ----------------------------------------------------

    def start_polling(self) -> None:
        """Serve delivery callbacks from a daemon thread until :meth:`close`."""
        self._polling.set()
        self._poller = threading.Thread(target=self._poll, name="eventide-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._polling.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:  # confluent-kafka raises fatal errors from poll()
                self.on_error(exc.args[0])
            except Exception:  # a callback failed; it has reported what it could
                logger.exception("producer poll failed")

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's errors (poll thread): a fatal one fails every ack, now and later."""
        if not err.fatal():
            logger.warning("producer: %s", err.str())
            return
        if self.fatal is not None:
            return
        logger.error("producer fatal error: %s", err.str())
        self.fatal = err
        self.call_soon(self._fail_outstanding)

    def _fail_outstanding(self) -> None:
        for delivery in list(self._outstanding):
            delivery.fail()

    def finished(self, delivery: Delivery) -> None:
        """``delivery`` has all its reports (or failed): stop tracking it."""
        self._outstanding.discard(delivery)

    def call_soon(self, callback: Any, *args: Any) -> None:
        """Run ``callback`` on the event loop (from any thread); dropped once it is closed."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    async def close(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout``) for what is in flight, then stop polling.

        After a fatal error nothing more will be acknowledged: it stops waiting.
        """
        deadline = self._loop.time() + timeout
        remaining = 0
        while self.fatal is None:
            try:
                remaining = await asyncio.to_thread(self._producer.flush, 0.5)
            except KafkaException as exc:  # a fatal error, served by flush() instead of poll()
                self.on_error(exc.args[0])
            if not remaining or self._loop.time() >= deadline:
                break
        if remaining:
            logger.warning("producer closed with %d records not acknowledged", remaining)
        self._polling.clear()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5.0)


class Delivery:
    """One submit's records in the producer: the :class:`~streams.transport.Acks`."""

    def __init__(self, sender: ConfluentSender, started: float) -> None:
        self._sender = sender
        self._future: asyncio.Future[None] = sender._loop.create_future()
        self._deadline = started + DELIVERY_TIMEOUT_MS / 1000 - ACK_MARGIN_S
        """Loop time after which a record of this submit may have timed out."""
        self._expected = 0
        self._reported = 0
        self._sealed = False
        self._last: dict[tuple[str, int], int] = {}
        self._errors: list[str] = []

    def expect(self) -> None:
        """One more partition whose last record will report (event loop)."""
        self._expected += 1

    def seal(self) -> None:
        """No more records will be added (event loop)."""
        self._sealed = True
        self._check()

    def delivered(self, err: KafkaError | None, msg: Any) -> None:
        """Delivery callback of a partition's last record (producer's poll thread)."""
        tp = (msg.topic(), msg.partition())
        if err is not None:
            self._errors.append(f"{tp[0]}[{tp[1]}]: {err.str()}")
        else:
            offset = msg.offset()
            if offset is None or offset < 0:  # acked as a duplicate, without its offset
                self._errors.append(f"{tp[0]}[{tp[1]}]: acknowledged without an offset")
            elif offset > self._last.get(tp, -1):  # chunks of one submit: the latest
                self._last[tp] = offset
        self._sender.call_soon(self.reported)

    def reported(self) -> None:
        """One partition reported (event loop)."""
        self._reported += 1
        self._check()

    def fail(self) -> None:
        """The producer failed: stop waiting, :meth:`acknowledged` raises (event loop)."""
        self._finish()

    def _check(self) -> None:
        if self._sealed and self._reported >= self._expected:
            self._finish()

    def _finish(self) -> None:
        if not self._future.done():
            self._future.set_result(None)
        self._sender.finished(self)

    async def acknowledged(self) -> dict[tuple[str, int], int]:
        """Wait for every ack; the offset of the last record per (topic, partition).

        Raises :class:`~streams.exceptions.DeliveryError` if a record failed,
        the producer hit a fatal error, or the acks did not come in time.
        """
        if not self._future.done():
            timeout = max(0.0, self._deadline - self._sender._loop.time())
            try:
                await asyncio.wait_for(asyncio.shield(self._future), timeout)
            except TimeoutError:
                pending = self._expected - self._reported
                raise DeliveryError(
                    f"{pending} of {self._expected} partitions not acknowledged within "
                    f"{DELIVERY_TIMEOUT_MS / 1000 - ACK_MARGIN_S:.0f}s of being produced"
                ) from None
        fatal = self._sender.fatal
        if fatal is not None:
            raise DeliveryError(f"the producer failed: {fatal.str()}")
        if self._errors:
            raise DeliveryError(
                f"{len(self._errors)} partitions failed to deliver: {'; '.join(self._errors[:5])}"
            )
        return dict(self._last)

"""The outbox relay: publishes committed events to Kafka, in order per entity.

Loop: claim a batch of pending rows (only this relay gets rows of those
entities until the claim closes), send them with an idempotent producer
(``acks=all``, ``enable_idempotence``), mark the acknowledged ones published,
close the claim. Rows not acknowledged stay pending and are sent again later
with the same event id, so a crash or a broker outage can duplicate an event
but never lose one. Per entity only the acknowledged prefix of the batch is
marked, so a retry never puts an entity's later event before an earlier one.

Published rows and idempotency answers are deleted after
``EVENTIDE_OUTBOX_RETENTION`` seconds.
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

from schemas.envelope import decode_envelope
from streams.settings import Settings
from streams.topics import ensure_topics

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

    def __init__(self, settings: Settings, store: OutboxStore, relay_id: str | None = None):
        self.settings = settings
        self.store = store
        self.relay_id = relay_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = RelayStats()
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._last_cleanup = 0.0

    def wake(self) -> None:
        """Called after a commit: publish now instead of at the next poll."""
        self._wakeup.set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"{self.settings.app_id}-relay",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            request_timeout_ms=15_000,
        )

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Create the topics and start a producer, retrying while Kafka is away."""
        delay = 0.5
        while not stop.is_set():
            producer = self._new_producer()
            try:
                await ensure_topics(self.settings)
                await producer.start()
                self._producer = producer
                logger.info("relay %s connected to %s", self.relay_id, self.settings.broker_url)
                return True
            except Exception as exc:
                await producer.stop()
                logger.warning("relay cannot reach Kafka (%s); retrying in %.1fs", exc, delay)
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, 5.0)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; survives broker outages and store hiccups."""
        logger.info("relay %s started on %r", self.relay_id, self.store)
        try:
            if not await self._connect(stop):
                return
            while not stop.is_set():
                try:
                    sent, failed = await self.publish_once()
                except Exception:
                    logger.exception("relay batch failed; retrying")
                    sent, failed = 0, 1
                if failed:
                    await self._reset_producer(stop)
                    continue
                await self._maybe_cleanup()
                if sent == 0:
                    self._wakeup.clear()
                    waiter = asyncio.ensure_future(self._wakeup.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait(
                        {waiter, stopper},
                        timeout=self.settings.relay_poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    waiter.cancel()
                    stopper.cancel()
        finally:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
            await self.store.release(self.relay_id)
            logger.info("relay %s stopped: %d published", self.relay_id, self.stats.published)

    async def _reset_producer(self, stop: asyncio.Event) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await _sleep_or_stop(stop, 1.0)
        await self._connect(stop)

    async def publish_once(self) -> tuple[int, int]:
        """One batch: returns (rows marked published, rows whose send failed)."""
        async with self.store.claim(self.relay_id, self.settings.relay_batch_size) as claim:
            if not claim.rows:
                return 0, 0
            return await self._publish(claim)

    async def _publish(self, claim: Claim) -> tuple[int, int]:
        producer = self._producer
        assert producer is not None
        sent: list[tuple[OutboxRow, asyncio.Future[object]]] = []
        error: BaseException | None = None
        for row in claim.rows:
            try:
                headers = decode_envelope(row.value).headers()
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
        self.stats.lags.extend(acked_at - row.created_at for row in ok)
        failed = len(claim.rows) - len(ok)
        if failed:
            self.stats.failed_batches += 1
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
    """``eventide relay``: run a relay until SIGINT/SIGTERM."""
    import signal

    from .store import store_for

    store = store_for(settings)
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await OutboxRelay(settings, store).run(stop)
    finally:
        await store.close()

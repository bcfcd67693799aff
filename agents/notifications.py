"""The notification projection: ``user-events`` + ``order-events`` → messages.

A welcome message on ``user.created``, an order confirmation on
``order.placed`` and a shipping notice on ``order.shipped``, delivered through
a :class:`~streams.sinks.NotificationSink` and sent at most once per event id
within the retention window (``EVENTIDE_NOTIFY_RETENTION``).

Per batch and partition:

1. :meth:`NotificationsProjection.apply` (synchronous, no I/O) decodes each
   notifying event, drops it if its dedupe key is in the ``notifications``
   table (sent before) or already queued in this batch (a duplicate), and
   queues the notification on the batch context;
2. :meth:`NotificationsProjection.after_batch` sends the queue through the
   circuit breaker and the sink (entities concurrently, up to the sink's
   ``concurrency``; one entity's notifications in order, and after one fails
   the entity's later ones wait behind it), flushes the sink, writes the dedupe
   keys of what was sent into the batch's transaction, expires old keys, and
   returns the events that were not sent: the engine sends them to the retry
   topic, and they come back through :meth:`apply` after the backoff.

**The crash window.** The dedupe keys become durable with the batch (changelog
acknowledged, then RocksDB). A worker that dies after the sink accepted a
notification and before that point has sent it without remembering it; the
event is redelivered and handed to the sink again. The file sink closes this
window itself: it skips event ids already in its file. The webhook sink sends
the event id as ``Idempotency-Key``: a receiver that honours it closes the
window; one that ignores it may see a notification twice after such a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from schemas.codecs import EventCodec
from schemas.exceptions import PersonalDataError
from schemas.personal import personal_fields
from streams.catalogue import KEY_FIELDS, ORDER_EVENTS, USER_EVENTS
from streams.exceptions import RecordKeyError
from streams.projection import BatchContext, Projection, projection
from streams.settings import Settings
from streams.sinks import (
    CircuitBreaker,
    CircuitOpenError,
    NotificationSink,
    SinkError,
    build_sink,
)
from tables.readmodels.notifications import (
    KINDS,
    TABLE_NAME,
    Notification,
    dedupe_key,
    expire,
    notification_for,
    record_sent,
)

logger = logging.getLogger(__name__)

_QUEUE = "_notifications"
"""Attribute of a :class:`BatchContext` holding the batch's queued notifications."""
_NOTIFYING = frozenset(name.encode() for name in KINDS)
_KEY_FIELDS = {name: KEY_FIELDS[name.split(".", 1)[0]] for name in KINDS}
"""Event name → the data field its Kafka key must be (``orderId``, ``userId``)."""


@dataclass(frozen=True)
class _Queued:
    """A notification waiting for the end of its batch."""

    record: Any
    """The record that caused it (returned to the engine if the send fails)."""
    notification: Notification
    key: bytes
    """Its dedupe key in the table."""


# Sends happen in after_batch, after apply() has succeeded: a failed send is
# retried on its own (it keeps an entity's order by failing the entity's later
# sends of the batch too), not through the key's ordered retry queue
# (ordered_retries=False). Its table records what the sink accepted, a side
# effect that replaying the events cannot reproduce: `eventide rebuild
# notifications` is refused (rebuildable=False).
@projection(
    TABLE_NAME,
    sources=(USER_EVENTS, ORDER_EVENTS),
    ordered_retries=False,
    rebuildable=False,
)
class NotificationsProjection(Projection):
    """(entity id, event id) → when the event's notification was sent."""

    expire_per_batch = 1000
    """Most dedupe keys one batch of one partition forgets (bounded work)."""

    def __init__(
        self,
        settings: Settings,
        codec: EventCodec,
        sink: NotificationSink | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, codec)
        if sink is None:
            sink = build_sink(settings)  # EVENTIDE_NOTIFY_SINK
        self.sink = sink
        self.breaker = breaker or CircuitBreaker(
            settings.notify_breaker_failures,
            settings.notify_breaker_cooldown,
            name=f"notification sink {sink.name}",
        )
        self.clock = clock
        self.personal = personal_fields((e.name, e.payload) for e in codec.registry)
        """Event name → personal fields, decrypted just before a notification is sent."""
        self.retention_ms = int(settings.notify_retention * 1000)
        self.sent = 0
        """Notifications the sink accepted (this process)."""
        self.failed = 0
        """Sends that failed or were refused by the breaker (this process)."""
        self.duplicates = 0
        """Events dropped because their notification was already sent or queued."""

    def apply(self, ctx: BatchContext, record: Any) -> None:
        headers = dict(record.headers or ())
        name = headers.get("event-name")
        if name is not None and name not in _NOTIFYING:
            return  # most events notify nobody: skip them without decoding
        notification = notification_for(self.codec.decode(record.value, record.headers))
        if notification is None:
            return
        entity_id = notification.entity_id
        if record.key != entity_id.encode():  # no key, or another entity's: never sent
            raise RecordKeyError(record.key, entity_id, _KEY_FIELDS[notification.event_name])
        key = dedupe_key(notification)
        queue: dict[bytes, _Queued] = vars(ctx).setdefault(_QUEUE, {})
        if key in queue or ctx.tx.get(key) is not None:
            self.duplicates += 1
            return
        queue[key] = _Queued(record, notification, key)

    async def after_batch(self, ctx: BatchContext) -> list[tuple[Any, BaseException]]:
        queued: dict[bytes, _Queued] = vars(ctx).pop(_QUEUE, None) or {}
        items = list(queued.values())
        failures: dict[int, BaseException] = {}
        if items:
            failures = await self._deliver(items)
        now_ms = int(self.clock() * 1000)
        sent = [item.key for i, item in enumerate(items) if i not in failures]
        record_sent(ctx.tx, sent, now_ms)
        expire(ctx.tx, now_ms, self.retention_ms, self.expire_per_batch)
        self.sent += len(sent)
        self.failed += len(failures)
        if failures:
            first = next(iter(failures.values()))
            logger.warning(
                "notifications: %d sent, %d not sent (breaker %s); first error: %s",
                len(sent),
                len(failures),
                self.breaker.state,
                first,
            )
        return [(items[i].record, failures[i]) for i in sorted(failures)]

    async def _deliver(self, items: list[_Queued]) -> dict[int, BaseException]:
        """Send and flush; returns {index in items: error} of those not sent."""
        by_entity: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_entity.setdefault(item.notification.entity_id, []).append(i)
        failures: dict[int, BaseException] = {}
        slots = asyncio.Semaphore(self.sink.concurrency)

        async def one_entity(indexes: list[int]) -> None:
            async with slots:
                for n, i in enumerate(indexes):
                    error = await self._send_one(items[i].notification)
                    if error is not None:
                        failures[i] = error
                        held = SinkError(
                            f"held behind event {items[i].notification.event_id} of the same "
                            f"entity, whose notification was not sent"
                        )
                        failures.update((j, held) for j in indexes[n + 1 :])
                        return

        await asyncio.gather(*(one_entity(ix) for ix in by_entity.values()))
        if len(failures) < len(items):
            try:
                await self.sink.flush()
            except Exception as exc:
                self.breaker.failure()
                failures.update((i, exc) for i in range(len(items)) if i not in failures)
        return failures

    async def _send_one(self, notification: Notification) -> BaseException | None:
        try:
            notification = self._reveal(notification)
        except PersonalDataError as exc:  # not the sink's fault: no breaker count
            return exc
        if not self.breaker.allow():
            return CircuitOpenError(
                f"notification sink {self.sink.name} is failing: circuit open, "
                f"event {notification.event_id} waits in retry"
            )
        try:
            await self.sink.send(notification)
        except Exception as exc:
            self.breaker.failure()
            return exc
        self.breaker.success()
        return None

    def _reveal(self, notification: Notification) -> Notification:
        """The notification with its personal fields in clear (null once the customer
        is forgotten); a key not read yet raises, so the send is retried."""
        names = self.personal.get(notification.event_name)
        if not names or self.keys is None or notification.recipient is None:
            return notification
        shown, forgotten = self.keys.reveal(notification.recipient, notification.data, names)
        data = {**notification.data, **shown}
        if forgotten:
            data["forgotten"] = True
        return replace(notification, data=data)

    async def close(self) -> None:
        """Close the sink (its files, its connections)."""
        await self.sink.close()

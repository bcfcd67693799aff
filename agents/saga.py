"""The order saga orchestrator: a projection on the batch engine.

Sources (co-partitioned, keyed by orderId): ``order-events`` (``order.placed``
starts a saga) and ``saga-replies``: the participants' answers and the clock,
ticks under the key ``\\x00tick`` (streams/ticks.py) in the same log as the
answers, so their order, and the decisions, are the same on every replay. Its
table ``sagas`` (orderId → state, tables/readmodels/saga.py) has a changelog
like every read model, and the commands it sends are the batch's outputs: the
engine produces them before the batch's changelog and offsets, so a batch
replayed after ``kill -9`` sends them again with the same deterministic ids
(participants deduplicate by id) and a state is never committed without its
commands.

Timeouts are decided by ticks, whose time is in the record: within a
partition the log orders ticks and replies, so a replay decides the same. A
step's deadline is set from the clock when the step starts (never before the
record's timestamp): orders and answers that waited while the worker was down
get their full timeout after a restart instead of timing out at once. A
replayed batch may set a later deadline than the first run did; that changes
a decision only if a tick fired within the replayed span, i.e. if the step
timeout were shorter than a batch's commit (two broker round trips).
Deadlines are indexed in the
table itself, per second, under ``\\x00due:<second>`` (orderId → deadline), with
``\\x00due-cursor`` the first second not yet scanned; a tick scans the seconds up
to its time. A restarted worker, or one newly assigned the partition, restores
the index from the changelog and finds the due sagas at its first tick.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from schemas.exceptions import EventError
from streams.catalogue import (
    ORDER_EVENTS,
    SAGA_COMMAND_TOPICS,
    SAGA_REPLIES,
    TICK_KEY,
)
from streams.exceptions import RecordKeyError
from streams.projection import BatchContext, Projection, Query, projection
from streams.settings import Settings
from tables.readmodels import saga
from tables.transaction import Transaction

if TYPE_CHECKING:  # the worker's metrics load prometheus and aiokafka
    from streams.metrics import SagaMetrics

logger = logging.getLogger(__name__)

DUE_PREFIX = b"\x00due:"
CURSOR_KEY = b"\x00due-cursor"
COMMANDS = {name: step for step, name in saga.FORWARD.items()} | {
    name: step for step, name in saga.COMPENSATION.items()
}
"""command name → the participant (step) whose topic it goes to."""
FINAL_EVENTS = frozenset({"order.saga_completed", "order.saga_failed"})
NOTE_METRIC = {
    "started": "started",
    "completed": "completed",
    "failed": "compensated",
    "timed-out": "timed_out",
    "ignored": "ignored_reply",
}


def _now(record: Any) -> int:
    """The time a step started or answered: the clock, never before the record."""
    return max(record.timestamp, int(time.time() * 1000))


def due_key(second: int) -> bytes:
    """The index entry of the deadlines falling in ``second`` (since the epoch)."""
    return DUE_PREFIX + str(second).encode()


@projection(
    saga.TABLE_NAME,
    sources=(ORDER_EVENTS, SAGA_REPLIES),
    outputs=(*SAGA_COMMAND_TOPICS.values(), ORDER_EVENTS),
    query=Query("sagas", "orderId"),
    rebuildable=False,  # it sends commands: replaying its sources would send them again
)
class SagaProjection(Projection):
    """orderId → the order saga's state; sends its commands and outcome."""

    def __init__(self, settings: Settings, codec: EventCodec) -> None:
        super().__init__(settings, codec)
        self.orders_topic, self.replies_topic = self.sources
        self.timing = saga.Timing(settings.saga_step_timeout_ms, settings.saga_retry_ms)
        self.command_topics = {
            step: settings.topic(spec.name) for step, spec in SAGA_COMMAND_TOPICS.items()
        }
        self.metrics: SagaMetrics | None = None
        """Set by the app factory (the engine's registry); None counts nothing."""

    # -- records ---------------------------------------------------------------

    def apply(self, ctx: BatchContext, record: Any) -> None:
        if record.key == TICK_KEY:
            self._tick(ctx, record)
        elif record.topic == self.orders_topic:
            try:
                self._start(ctx, record)
            except EventError:
                return  # bad input: the orders projection dead-letters it, once
        else:
            reply = self.codec.decode(record.value, record.headers)
            key = self._key(record, reply)
            current = ctx.tx.get(key)
            outcome = saga.on_reply(current, reply, _now(record), self.timing)
            self._done(ctx, key, current, outcome, record.partition)

    def _start(self, ctx: BatchContext, record: Any) -> None:
        """A saga for an ``order.placed``; other order events (and the saga's own
        outcome events) start nothing, and an order placed again starts nothing."""
        envelope = self.codec.decode(record.value, record.headers)
        if envelope.name != "order.placed":
            return
        key = self._key(record, envelope)
        current = ctx.tx.get(key)
        if current is not None:
            self._count("ignored_reply")
            return
        outcome = saga.start(envelope, _now(record), self.timing)
        self._done(ctx, key, current, outcome, record.partition)

    @staticmethod
    def _key(record: Any, envelope: Envelope) -> bytes:
        """The record's key, checked to be the event's orderId (:class:`RecordKeyError`)."""
        order_id = envelope.data.get("orderId")
        if not isinstance(order_id, str) or not order_id or record.key != order_id.encode():
            raise RecordKeyError(record.key, str(order_id), "orderId")
        return record.key

    def _tick(self, ctx: BatchContext, record: Any) -> None:
        """Run the sagas of this partition whose deadline is at or before the tick."""
        try:
            now = int(orjson.loads(record.value)["now"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            now = record.timestamp
        tx = ctx.tx
        cursor = tx.get(CURSOR_KEY)
        if cursor is None:
            return  # no deadline was ever set in this partition
        last = now // 1000
        due: list[tuple[int, str]] = []
        for second in range(cursor, last + 1):
            bucket = tx.get(due_key(second))
            if not bucket:
                continue
            for order_id, deadline in bucket.items():
                if deadline <= now:
                    due.append((deadline, order_id))
        if last > cursor:
            tx.set(CURSOR_KEY, last)
        for _, order_id in sorted(due):
            key = order_id.encode()
            current = tx.get(key)
            if current is None:
                continue
            outcome = saga.on_deadline(current, now, self.timing)
            self._done(ctx, key, current, outcome, record.partition)

    # -- effects ---------------------------------------------------------------

    def _done(
        self,
        ctx: BatchContext,
        key: bytes,
        current: dict[str, Any] | None,
        outcome: saga.Outcome,
        partition: int,
    ) -> None:
        """Write the new state, move its deadline in the index, queue its events."""
        state = outcome.state
        if state is None:
            if outcome.note == "ignored":
                self._count("ignored_reply")
            return
        old = current.get("indexed") if current else None
        if old is not None or state["deadline"] is not None:
            state["indexed"] = self._reindex(ctx.tx, key.decode(), old, state["deadline"])
        ctx.tx.set(key, state)
        for event in outcome.events:
            self._send(ctx, key, event, partition)
        self._count(NOTE_METRIC.get(outcome.note))
        if outcome.note == "timed-out" and state["status"] == saga.FAILED:
            self._count("compensated")  # timed out with nothing to undo
        if outcome.latency_ms is not None and self.metrics is not None:
            self.metrics.step(*outcome.latency_ms)
        if outcome.note in ("completed", "failed", "timed-out"):
            logger.info(
                "saga %s of order %s: %s %s",
                state["sagaId"],
                state["orderId"],
                state["status"],
                state["reason"] or "",
            )

    def _send(self, ctx: BatchContext, key: bytes, event: Envelope, partition: int) -> None:
        topic = (
            self.outputs[ORDER_EVENTS.name]
            if event.name in FINAL_EVENTS
            else self.command_topics[COMMANDS[event.name]]
        )
        ctx.send(topic, key, self.codec.encode_json(event), event.headers(), partition)

    @staticmethod
    def _reindex(tx: Transaction, order_id: str, old: int | None, new: int | None) -> int | None:
        """Move ``order_id`` from index second ``old`` to its ``new`` deadline; return
        the second it is filed under now (None: no deadline)."""
        if old is not None:
            bucket = tx.get(due_key(old))
            if bucket and order_id in bucket:
                bucket = {k: v for k, v in bucket.items() if k != order_id}
                tx.set(due_key(old), bucket or None)
        if new is None:
            return None
        second = new // 1000
        cursor = tx.get(CURSOR_KEY)
        if cursor is None:
            tx.set(CURSOR_KEY, second)
        elif second < cursor:
            second = cursor  # behind the scan: file it where the next tick looks
        bucket = dict(tx.get(due_key(second)) or {})
        bucket[order_id] = new
        tx.set(due_key(second), bucket)
        return second

    def _count(self, outcome: str | None) -> None:
        if outcome is not None and self.metrics is not None:
            self.metrics.count(outcome)

    def view(self, stored: Any) -> Any:
        return saga.saga_view(stored)

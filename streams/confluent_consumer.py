"""The engine's group consumer on librdkafka (confluent-kafka): :class:`ConfluentConsumer`.

It is the :class:`~streams.transport.Consumer` the engine uses: ``getmany``
returns ``{TopicPartition: [Record]}`` in offset order per partition, with
aiokafka's :class:`~aiokafka.TopicPartition` as keys (what the engine, its
batch commit and its metrics use), and :class:`Record` tuples with the
attributes the projections read (``topic partition offset key value headers
timestamp``; headers a list of ``(str, bytes)``).

**Threads.** librdkafka's ``consume`` blocks, and it calls the rebalance
callbacks on the calling thread from inside ``consume``. Every ``consume``
(and the final ``close``) runs on one daemon thread of this consumer; the
event loop awaits its result. A rebalance callback hands the engine's
listener coroutine to the event loop and waits for it: on revoke, the engine
completes its in-flight batch and commits before the partitions go; on
assign, it recovers the stores and ``seek``\\ s each partition, and those
positions become the offsets of the ``assign`` call the callback then makes
(librdkafka cannot seek a partition before it is assigned). Offset commits
and lookups run on the event loop's default executor, so they work while the
consume thread waits inside a callback.

**Batches.** ``getmany`` returns as soon as records are there, like aiokafka:
``consume(max_records, 0)`` takes what librdkafka has fetched; only when that
is nothing does it wait, up to ``timeout_ms``, for one record, then takes what
came with it. librdkafka drops records fetched before a ``seek``, ``pause`` or
rebalance from a batch (its version barriers), so a partition's records are
always those after its current position.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdPartition
from confluent_kafka.admin import OffsetSpec

logger = logging.getLogger(__name__)

NO_HEADERS: tuple[tuple[str, bytes], ...] = ()
MAX_CONSUME = 1_000_000
"""librdkafka's limit on the records of one ``consume`` call."""
REQUEST_TIMEOUT_S = 30.0
LEAVE_TIMEOUT_S = 5.0
"""How long :meth:`ConfluentConsumer.close` serves the revoke that leaving the group causes."""

GROUP_CHANGED = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._STATE,
    }
)
"""Commit errors that mean the group moved on (aiokafka's ``CommitFailedError``)."""


class Record(NamedTuple):
    """A consumed record: what the engine and the projections read of one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: int
    """Milliseconds since the epoch (the record's create or log-append time)."""


def to_batch(
    messages: list[Any], partitions: dict[tuple[str, int], TopicPartition]
) -> dict[TopicPartition, list[Record]]:
    """librdkafka messages → records per partition, in the order consumed.

    Kept to plain calls: it runs once per record. ``partitions`` caches the
    :class:`~aiokafka.TopicPartition` keys.
    """
    groups: dict[tuple[str, int], list[Record]] = {}
    new = tuple.__new__
    for m in messages:
        if m.error() is not None:
            _consume_error(m.error())
            continue
        topic = m.topic()
        partition = m.partition()
        headers = m.headers()
        record = new(
            Record,
            (
                topic,
                partition,
                m.offset(),
                m.key(),
                m.value(),
                headers if headers is not None else NO_HEADERS,
                m.timestamp()[1],
            ),
        )
        group = groups.get((topic, partition))
        if group is None:
            group = groups[(topic, partition)] = []
        group.append(record)
    batch = {}
    for key, records in groups.items():
        tp = partitions.get(key)
        if tp is None:
            tp = partitions[key] = TopicPartition(*key)
        batch[tp] = records
    return batch


def _consume_error(err: KafkaError) -> None:
    if err.fatal():
        raise KafkaException(err)
    logger.warning("consumer: %s", err.str())


class _Runner:
    """One daemon thread that runs calls in order; the event loop awaits their results."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._calls.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._calls.put(None)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed
                return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ConfluentConsumer:
    """The projections' group consumer on a ``confluent_kafka.Consumer``.

    ``admin`` (a ``confluent_kafka.admin.AdminClient``) answers
    :meth:`end_offsets`; ``on_assignment`` is called on the event loop at every
    assignment, before the listener (the transport refreshes its host map).
    """

    def __init__(
        self,
        config: dict[str, Any],
        admin: Any = None,
        on_assignment: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        config = {**config, "enable.auto.commit": False, "enable.auto.offset.store": False}
        self._consumer = Consumer(config)
        self._admin = admin
        self._on_assignment = on_assignment
        self._runner = _Runner("eventide-consumer", self._loop)
        self._listener: ConsumerRebalanceListener | None = None
        self._partitions: dict[tuple[str, int], TopicPartition] = {}
        self._assigned: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int] | None = None
        """Positions the listener seeks while an assignment is being made."""
        self._bridged: concurrent.futures.Future[Any] | None = None
        self._closing = False
        self._closed = False

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        """Join the group for ``topics``; ``listener`` hears every revoke and assign."""
        self._listener = listener
        self._consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    # -- fetching --------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        """Records per partition, in offset order: at most ``max_records``, waiting at
        most ``timeout_ms`` when none are there. Only the whole assignment is read."""
        if partitions:
            raise NotImplementedError("getmany of some partitions: the engine reads them all")
        if self._closing:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        limit = min(max_records or 10_000, MAX_CONSUME)
        messages = await self._runner.run(self._consume, limit, timeout_ms / 1000)
        if not messages or self._closing:
            return {}
        return to_batch(messages, self._partitions)

    def _consume(self, limit: int, timeout: float) -> list[Any]:
        """(consume thread) What is there now; else wait for one record and take what came."""
        consume = self._consumer.consume
        messages = consume(limit, 0)
        if not messages and timeout > 0:
            messages = consume(1, timeout)
            if messages and limit > 1:
                messages += consume(limit - 1, 0)
        return messages

    # -- positions ---------------------------------------------------------------

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._partitions.get((topic, partition))
        if tp is None:
            tp = self._partitions[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on (during an assignment: from the start)."""
        if self._seeks is not None and partition in self._seeks:
            self._seeks[partition] = offset
            return
        self._consumer.seek(RdPartition(partition.topic, partition.partition, offset))

    def pause(self, *partitions: TopicPartition) -> None:
        self._consumer.pause([RdPartition(tp.topic, tp.partition) for tp in partitions])

    def resume(self, *partitions: TopicPartition) -> None:
        self._consumer.resume([RdPartition(tp.topic, tp.partition) for tp in partitions])

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    async def position(self, partition: TopicPartition) -> int:
        """The next offset to read (0 until a record after a seek was read)."""
        [got] = self._consumer.position([RdPartition(partition.topic, partition.partition)])
        return max(0, got.offset)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the next offsets to read; ``CommitFailedError`` if the group moved on."""
        if not offsets:
            return
        wanted = [RdPartition(tp.topic, tp.partition, int(o)) for tp, o in offsets.items()]
        try:
            done = await asyncio.to_thread(
                lambda: self._consumer.commit(offsets=wanted, asynchronous=False)
            )
        except KafkaException as exc:
            _commit_failed(exc.args[0])
            raise
        for part in done or ():
            if part.error is not None:
                _commit_failed(part.error)
                raise KafkaException(part.error)

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition`` (None if none)."""
        [got] = await asyncio.to_thread(
            self._consumer.committed,
            [RdPartition(partition.topic, partition.partition)],
            REQUEST_TIMEOUT_S,
        )
        return got.offset if got.offset >= 0 else None

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The log end offset of each partition (one ListOffsets request)."""
        wanted = {RdPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in partitions}
        futures = self._admin.list_offsets(wanted, request_timeout=REQUEST_TIMEOUT_S)
        ends = {}
        for part, future in futures.items():
            ends[self._tp(part.topic, part.partition)] = (await asyncio.wrap_future(future)).offset
        return ends

    # -- rebalances (consume thread) ----------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Let the listener recover and seek, then assign from the positions it chose."""
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        self._assigned = set(tps)
        if not self._closing:
            if self._on_assignment is not None:
                self._call_soon(self._on_assignment)
            self._seeks = dict.fromkeys(tps, OFFSET_INVALID)
            try:
                if self._listener is not None:
                    self._bridge(self._listener.on_partitions_assigned(tps))
            finally:
                seeks, self._seeks = self._seeks, None
        else:
            seeks = {}
        consumer.assign(
            [RdPartition(tp.topic, tp.partition, seeks.get(tp, OFFSET_INVALID)) for tp in tps]
        )

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Let the listener complete its batch and commit, then give the partitions up."""
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        if not self._closing and self._listener is not None:
            self._bridge(self._listener.on_partitions_revoked(tps))
        self._assigned = self._assigned - set(tps)  # a new set: the loop thread reads it
        consumer.unassign()

    def _bridge(self, coroutine: Awaitable[None]) -> None:
        """Run ``coroutine`` on the event loop and wait for it (consume thread)."""
        try:
            self._bridged = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        except RuntimeError:  # the loop is closed
            coroutine.close()  # type: ignore[attr-defined]
            return
        try:
            self._bridged.result()
        except concurrent.futures.CancelledError:
            logger.info("rebalance listener cancelled: the consumer is closing")
        except Exception:
            logger.exception("rebalance listener failed")
        finally:
            self._bridged = None

    def _call_soon(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(callback)

    # -- closing -------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the group (partitions move at once, static membership or not) and close.

        The listener hears nothing more: the engine has completed its batch.
        """
        if self._closed:
            return
        self._closing = True
        bridged = self._bridged
        if bridged is not None:
            bridged.cancel()
        try:
            await self._runner.run(self._leave)
        finally:
            self._closed = True
            self._runner.stop()

    def _leave(self) -> None:
        """(consume thread) Unsubscribe, serve the revoke it causes, close.

        librdkafka sends a static member's LeaveGroup only on unsubscribe, not
        on close (KIP-345); without it the partitions would wait out the session.
        """
        try:
            self._consumer.unsubscribe()
            deadline = time.monotonic() + LEAVE_TIMEOUT_S
            while self._assigned and time.monotonic() < deadline:
                self._consumer.consume(1000, 0.1)
        except Exception as exc:
            logger.warning("leaving the group: %s", exc)
        finally:
            self._consumer.close()


def _commit_failed(err: KafkaError) -> None:
    """Raise aiokafka's ``CommitFailedError`` for errors that mean the group moved on
    (or a retriable one: the stores keep the applied offsets either way)."""
    if err.code() in GROUP_CHANGED or err.retriable():
        raise CommitFailedError(err.str())

"""ConfluentSender over an in-memory producer: acks become offsets, failures fail the batch."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams import confluent_sender
from streams.confluent_sender import ConfluentSender
from streams.exceptions import DeliveryError


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Appends to per-partition logs; ``poll`` (the sender's thread) reports deliveries."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        self.callbacks: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.fail: set[bytes] = set()
        """Keys whose partition's report is an error."""
        self.hold = False
        """Report nothing while set."""
        self.full = 0
        """Calls to produce that raise BufferError first."""

    def produce(self, topic, value, key, partition, callback=None, _=None, __=0, headers=None):  # type: ignore[no-untyped-def]
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        with self.lock:
            log = self.logs.setdefault((topic, partition), [])
            log.append((key, value, headers, callback is not None))
            if callback is not None:
                failed = any(k in self.fail for k, *_ in log)
                self.callbacks.append((callback, topic, partition, len(log) - 1, failed))

    def poll(self, timeout: float) -> int:
        with self.lock:
            if self.hold:
                ready: list[tuple[Any, ...]] = []
            else:
                ready, self.callbacks = self.callbacks, []
        for callback, topic, partition, offset, failed in ready:
            err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            callback(err if failed else None, FakeMessage(topic, partition, offset))
        threading.Event().wait(min(timeout, 0.005))
        return len(ready)

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
async def sender():
    producer = FakeProducer()
    sender = ConfluentSender(producer, asyncio.get_running_loop())
    sender.start_polling()
    yield sender
    await sender.close()


async def test_acks_give_the_last_offset_per_partition_in_order(sender):
    producer = sender._producer
    for n in range(10):
        sender.add("out", n % 2, f"k{n}".encode(), b"v", [("n", str(n).encode())] if n else ())
    sender.add("changelog", 3, b"k", None)
    first = await sender.submit()
    sender.add("out", 0, b"k10", b"v")
    second = await sender.submit()
    assert await first.acknowledged() == {("out", 0): 4, ("out", 1): 4, ("changelog", 3): 0}
    assert await second.acknowledged() == {("out", 0): 5}
    keys = [k for k, *_ in producer.logs[("out", 0)]]
    assert keys == [b"k0", b"k2", b"k4", b"k6", b"k8", b"k10"]  # added order, across submits
    # only the last record of each partition of a submit carries a callback
    assert [cb for *_, cb in producer.logs[("out", 0)]] == [False] * 4 + [True, True]
    assert producer.logs[("out", 0)][0][2] is None  # no headers: none passed to librdkafka
    assert producer.logs[("out", 1)][0][2] == [("n", b"1")]


async def test_an_empty_submit_is_acknowledged_at_once(sender):
    assert await (await sender.submit()).acknowledged() == {}
    assert await sender.flush() == {}


async def test_a_failed_delivery_fails_acknowledged(sender):
    sender._producer.fail.add(b"bad")
    sender.add("out", 0, b"ok", b"v")
    sender.add("out", 0, b"bad", b"v")
    sender.add("out", 0, b"ok-after", b"v")
    sender.add("out", 1, b"fine", b"v")
    acks = await sender.submit()
    with pytest.raises(DeliveryError, match=r"out\[0\]: Broker: Message size too large"):
        await acks.acknowledged()


async def test_a_fatal_error_fails_outstanding_and_later_acks(sender):
    sender._producer.hold = True
    sender.add("out", 0, b"k", b"v")
    waiting = await sender.submit()
    fatal = KafkaError(KafkaError._GAPLESS_GUARANTEE, "gap-less ordering broken", fatal=True)
    sender.on_error(fatal)
    with pytest.raises(DeliveryError, match="the producer failed: gap-less ordering broken"):
        await asyncio.wait_for(waiting.acknowledged(), 5)
    sender._producer.hold = False
    sender.add("out", 0, b"k", b"v")
    with pytest.raises(DeliveryError, match="the producer failed"):
        await sender.flush()


async def test_a_fatal_error_raised_by_poll_fails_the_acks():
    class RaisingProducer(FakeProducer):
        def poll(self, timeout: float) -> int:
            if self.callbacks:
                self.callbacks = []
                err = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
                raise KafkaException(err)
            return 0

    sender = ConfluentSender(RaisingProducer(), asyncio.get_running_loop())
    sender.start_polling()
    try:
        sender.add("out", 0, b"k", b"v")
        with pytest.raises(DeliveryError, match="the producer failed: fenced"):
            await asyncio.wait_for(sender.flush(), 5)
    finally:
        await sender.close()


async def test_acks_that_do_not_come_before_a_record_could_time_out_fail(sender, monkeypatch):
    monkeypatch.setattr(confluent_sender, "DELIVERY_TIMEOUT_MS", 5_200)  # deadline: 0.2 s
    sender._producer.hold = True
    sender.add("out", 0, b"k", b"v")
    acks = await sender.submit()
    with pytest.raises(DeliveryError, match="1 of 1 partitions not acknowledged within 0s"):
        await acks.acknowledged()


async def test_a_full_queue_waits_and_keeps_the_order(sender):
    sender._producer.full = 3
    for n in range(5):
        await sender.append("out", 0, str(n).encode(), b"v")
    assert await sender.flush() == {("out", 0): 4}
    assert [k for k, *_ in sender._producer.logs[("out", 0)]] == [b"0", b"1", b"2", b"3", b"4"]


async def test_append_hands_over_chunks_with_one_ack_for_all(sender, monkeypatch):
    monkeypatch.setattr(confluent_sender, "CHUNK_RECORDS", 3)
    for n in range(7):
        await sender.append("changelog", n % 2, str(n).encode(), b"v")
    assert len(sender._producer.logs[("changelog", 0)]) == 3  # two chunks of 3 went out
    assert await sender.flush() == {("changelog", 0): 3, ("changelog", 1): 2}

"""ConfluentConsumer over an in-memory librdkafka consumer: records, rebalances, commits;
and how the librdkafka transport learns who owns what."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdPartition

from streams import confluent_consumer
from streams.assignor import GroupHosts, HostAwareRangeAssignor
from streams.confluent_consumer import ConfluentConsumer, Record, to_batch
from streams.confluent_transport import ConfluentTransport, consumer_config, hosts_of, member_url
from streams.engine import make_transport
from streams.settings import Settings
from streams.transport import KafkaTransport, instance_id


class FakeMessage:
    def __init__(self, topic, partition, offset, headers=None, error=None):  # type: ignore[no-untyped-def]
        self._args = (topic, partition, offset, headers, error)

    def error(self):  # type: ignore[no-untyped-def]
        return self._args[4]

    def topic(self):  # type: ignore[no-untyped-def]
        return self._args[0]

    def partition(self):  # type: ignore[no-untyped-def]
        return self._args[1]

    def offset(self):  # type: ignore[no-untyped-def]
        return self._args[2]

    def key(self):  # type: ignore[no-untyped-def]
        return f"k{self._args[2]}".encode()

    def value(self):  # type: ignore[no-untyped-def]
        return b"v"

    def headers(self):  # type: ignore[no-untyped-def]
        return self._args[3]

    def timestamp(self):  # type: ignore[no-untyped-def]
        return (1, 1_700_000_000_000 + self._args[2])


def test_messages_become_records_per_partition_in_order():
    messages = [
        FakeMessage("a", 0, 5, [("event-name", b"order.placed")]),
        FakeMessage("a", 1, 9),
        FakeMessage("a", 0, 6),
        FakeMessage("b", 0, 1),
    ]
    batch = to_batch(messages, {})
    assert list(batch) == [TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)]
    first = batch[TopicPartition("a", 0)][0]
    assert first == Record(
        "a", 0, 5, b"k5", b"v", [("event-name", b"order.placed")], 1_700_000_000_005
    )
    assert (first.topic, first.offset, first.key, first.timestamp) == (
        "a",
        5,
        b"k5",
        1_700_000_000_005,
    )
    assert [r.offset for r in batch[TopicPartition("a", 0)]] == [5, 6]
    assert batch[TopicPartition("a", 1)][0].headers == ()  # no headers: an empty sequence
    assert getattr(first, "retry", None) is None  # what the failure router looks for


def test_a_fatal_consume_error_raises_and_others_are_skipped():
    warning = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "gone")
    batch = to_batch([FakeMessage("a", 0, 0, error=warning), FakeMessage("a", 0, 1)], {})
    assert [r.offset for r in batch[TopicPartition("a", 0)]] == [1]
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    with pytest.raises(KafkaException):
        to_batch([FakeMessage("a", 0, 0, error=fatal)], {})


class FakeRdConsumer:
    """librdkafka's consumer: consume() serves queued rebalances first, on its caller's thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.rebalances: list[tuple[str, list[RdPartition]]] = []
        self.messages: list[FakeMessage] = []
        self.calls: list[tuple[str, Any]] = []
        self.commit_error: KafkaError | None = None
        self.threads: set[str] = set()

    def subscribe(self, topics, on_assign, on_revoke, on_lost):  # type: ignore[no-untyped-def]
        self.callbacks = {"assign": on_assign, "revoke": on_revoke}

    def consume(self, limit: int, timeout: float) -> list[FakeMessage]:
        self.threads.add(threading.current_thread().name)
        while self.rebalances:
            kind, parts = self.rebalances.pop(0)
            self.callbacks[kind](self, parts)
        got, self.messages = self.messages[:limit], self.messages[limit:]
        return got

    def assign(self, parts: list[RdPartition]) -> None:
        self.calls.append(("assign", [(p.topic, p.partition, p.offset) for p in parts]))

    def unassign(self) -> None:
        self.calls.append(("unassign", None))

    def seek(self, part: RdPartition) -> None:
        self.calls.append(("seek", (part.topic, part.partition, part.offset)))

    def commit(self, offsets, asynchronous):  # type: ignore[no-untyped-def]
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        self.calls.append(("commit", [(p.topic, p.partition, p.offset) for p in offsets]))
        return offsets

    def committed(self, parts, timeout):  # type: ignore[no-untyped-def]
        return [
            RdPartition(p.topic, p.partition, 3 if p.partition == 0 else OFFSET_INVALID)
            for p in parts
        ]

    def unsubscribe(self) -> None:
        self.rebalances.append(("revoke", [RdPartition("t", 0), RdPartition("t", 1)]))

    def close(self) -> None:
        self.calls.append(("close", None))


class Listener(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.consumer: ConfluentConsumer | None = None
        self.heard: list[tuple[str, list[TopicPartition], str]] = []

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await asyncio.sleep(0.05)  # the consume thread waits for the listener
        assert self.consumer is not None
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            self.consumer.seek(tp, 10 + tp.partition if committed is None else committed)
        self.heard.append(("assigned", assigned, threading.current_thread().name))

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await asyncio.sleep(0.05)
        assert self.consumer is not None
        await self.consumer.commit({tp: 42 for tp in revoked})
        self.heard.append(("revoked", revoked, threading.current_thread().name))


@pytest.fixture
async def consumer(monkeypatch):
    monkeypatch.setattr(confluent_consumer, "Consumer", FakeRdConsumer)
    assigned: list[bool] = []
    consumer = ConfluentConsumer({"group.id": "g"}, on_assignment=lambda: assigned.append(True))
    consumer.assigned_calls = assigned  # type: ignore[attr-defined]
    yield consumer
    await consumer.close()


async def test_an_assignment_starts_where_the_listener_seeks(consumer):
    rd: FakeRdConsumer = consumer._consumer
    assert rd.config["enable.auto.commit"] is False
    listener = Listener()
    listener.consumer = consumer
    consumer.subscribe(["t"], listener)
    rd.rebalances.append(("assign", [RdPartition("t", 0), RdPartition("t", 1)]))
    rd.messages = [FakeMessage("t", 0, 3), FakeMessage("t", 1, 11)]
    batch = await consumer.getmany(timeout_ms=100, max_records=10)
    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert [name for name, *_ in listener.heard] == ["assigned"]
    assert listener.heard[0][2] == threading.current_thread().name  # on the event loop
    assert rd.threads == {"eventide-consumer"}
    # seeks made by the listener during the assignment are the assign() call's offsets
    assert rd.calls == [("assign", [("t", 0, 3), ("t", 1, 11)])]
    assert consumer.assignment() == {t0, t1}
    assert consumer.assigned_calls == [True]
    assert {tp: [r.offset for r in rs] for tp, rs in batch.items()} == {t0: [3], t1: [11]}
    consumer.seek(t0, 7)  # outside an assignment: a real seek
    assert rd.calls[-1] == ("seek", ("t", 0, 7))


async def test_a_revoke_waits_for_the_listener_before_the_partitions_go(consumer):
    rd: FakeRdConsumer = consumer._consumer
    listener = Listener()
    listener.consumer = consumer
    consumer.subscribe(["t"], listener)
    rd.rebalances.append(("assign", [RdPartition("t", 0)]))
    await consumer.getmany(timeout_ms=0)
    rd.rebalances.append(("revoke", [RdPartition("t", 0)]))
    assert await consumer.getmany(timeout_ms=0) == {}
    assert [name for name, *_ in listener.heard] == ["assigned", "revoked"]
    assert rd.calls[-2:] == [("commit", [("t", 0, 42)]), ("unassign", None)]
    assert consumer.assignment() == set()


async def test_close_leaves_the_group_without_calling_the_listener(consumer):
    rd: FakeRdConsumer = consumer._consumer
    listener = Listener()
    listener.consumer = consumer
    consumer.subscribe(["t"], listener)
    rd.rebalances.append(("assign", [RdPartition("t", 0), RdPartition("t", 1)]))
    await consumer.getmany(timeout_ms=0)
    await consumer.close()
    assert [name for name, *_ in listener.heard] == ["assigned"]
    assert [call for call, _ in rd.calls[-2:]] == ["unassign", "close"]
    assert await consumer.getmany(timeout_ms=0) == {}


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (KafkaError.ILLEGAL_GENERATION, CommitFailedError),
        (KafkaError.REBALANCE_IN_PROGRESS, CommitFailedError),
        (KafkaError._ASSIGNMENT_LOST, CommitFailedError),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaException),
    ],
)
async def test_commit_errors_of_a_group_that_moved_on_are_commit_failed(consumer, code, raised):
    consumer._consumer.commit_error = KafkaError(code)
    with pytest.raises(raised):
        await consumer.commit({TopicPartition("t", 0): 5})
    consumer._consumer.commit_error = None
    await consumer.commit({})  # nothing to commit: no request
    assert consumer._consumer.calls == []


def _member(client_id: str, parts: list[tuple[str, int]]) -> Any:
    assignment = SimpleNamespace(topic_partitions=[RdPartition(t, p) for t, p in parts])
    return SimpleNamespace(client_id=client_id, assignment=assignment)


def test_the_host_map_comes_from_the_members_client_ids():
    description = SimpleNamespace(
        members=[
            _member(
                "g-consumer@http://10.0.0.2:6066", [("orders", 1), ("users", 1), ("orders", 0)]
            ),
            _member("g-consumer@http://10.0.0.1:6066", []),
            _member("someone-else", [("orders", 2)]),
        ]
    )
    assert hosts_of(description) == {
        "http://10.0.0.2:6066": {"orders": [0, 1], "users": [1]},
        "http://10.0.0.1:6066": {},
    }
    assert member_url("g-consumer@https://w:1") == "https://w:1"
    assert member_url("g@not-a-url") is None and member_url(None) is None
    hosts = GroupHosts()
    hosts.hosts = hosts_of(description)
    assert hosts.owner("orders", 1) == "http://10.0.0.2:6066"
    assert hosts.owner("orders", 2) is None


def test_static_membership_id_uses_only_characters_kafka_accepts():
    settings = Settings.from_env({"EVENTIDE_APP_ID": "shop.eu_1", "EVENTIDE_WEB_HOST": "::1"})
    assert instance_id(settings) == "shop.eu_1-projections-__1-6066"
    config = consumer_config(settings)
    assert config["group.instance.id"] == instance_id(settings)
    assert member_url(config["client.id"]) == settings.web_url
    assert config["partition.assignment.strategy"] == "range"


def test_the_kafka_client_setting_picks_the_transport():
    hosts = HostAwareRangeAssignor("http://127.0.0.1:6066")
    assert isinstance(make_transport(Settings.from_env({}), hosts, []), KafkaTransport)
    confluent = Settings.from_env({"EVENTIDE_KAFKA_CLIENT": "confluent"})
    assert isinstance(make_transport(confluent, hosts, []), ConfluentTransport)

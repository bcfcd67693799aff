"""The engine's batch path, driven through an in-memory transport (no broker).

Each test feeds records to ``ProjectionEngine.process`` as ``getmany`` would and
checks what a user sees: the read model, the changelog, the outputs, the
committed offsets; crashes are an engine dropped between two steps and a new
one opened over the same data directory and broker.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import TopicPartition

from agents.orders import OrdersProjection
from schemas.codecs import EventCodec
from schemas.envelope import new_event
from streams.catalogue import ORDER_EVENTS
from streams.checkpoint import BatchCommit
from streams.engine import Lookup, ProjectionEngine
from streams.failures import Outcome, retry_topic
from streams.projection import BatchContext, Projection, projection
from streams.settings import Settings
from tables.changelog import CHANGELOG, OFFSETS_KEY, RECORDS, SEQ
from tables.transaction import TransactionStatus

from .fake_transport import FakeBroker, FakeTransport

SOURCE = TopicPartition("order-events", 0)
RETRY = TopicPartition(retry_topic("order-events"), 0)
CODEC = EventCodec()


def settings_for(tmp_path) -> Settings:
    return Settings.from_env(
        {
            "EVENTIDE_DATA_DIR": str(tmp_path / "data"),
            "EVENTIDE_PARTITIONS": "1",
            "EVENTIDE_RETRY_BACKOFF_MS": "60000",
            # deeper than the default, to see batches overtake each other's acks
            "EVENTIDE_PIPELINE_DEPTH": "4",
        }
    )


async def open_engine(tmp_path, broker: FakeBroker, *projections: type[Projection]):
    """A worker that was just assigned the source partition (and its retry topic)."""
    settings = settings_for(tmp_path)
    chosen = projections or (OrdersProjection,)
    engine = ProjectionEngine(
        settings, [cls(settings, CODEC) for cls in chosen], transport=FakeTransport(broker)
    )
    engine.transport.consumer.assigned = {SOURCE, RETRY}  # type: ignore[union-attr]
    await engine.on_assigned([SOURCE, RETRY])
    return engine


def crash(engine: ProjectionEngine) -> None:
    """kill -9: the stores' files stay as they are; nothing pending is written."""
    for store in engine.stores.values():
        store.close()


def publish(broker: FakeBroker, *events):
    for event in events:
        key = event.data["orderId"].encode()
        broker.append(SOURCE.topic, 0, key, CODEC.encode_json(event), event.headers())
    return {SOURCE: list(broker.log(SOURCE.topic))}


def newest(broker: FakeBroker, event):  # type: ignore[no-untyped-def]
    """A batch of just ``event``, published after what the broker holds."""
    return {SOURCE: publish(broker, event)[SOURCE][-1:]}


def placed(order_id: str, total: float = 16.0):
    items = [{"sku": "sku-mug", "quantity": 2, "unitPrice": total / 2}]
    data = {"orderId": order_id, "customerId": "c-9", "items": items, "totalAmount": total}
    return new_event("order.placed", data, source="order-service")


def paid(order_id: str, total: float = 16.0):
    return new_event(
        "order.payment_confirmed", {"orderId": order_id, "paymentId": "p-1", "amount": total}
    )


def changelog(broker: FakeBroker, engine: ProjectionEngine) -> list[tuple[bytes, object]]:
    return [
        (r.key, orjson.loads(r.value) if r.value else None)
        for r in broker.log(engine.changelog_topic("orders"))
    ]


async def test_a_batch_reaches_the_read_model_changelog_outputs_and_offsets(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    batch = publish(broker, placed("o-1"), placed("o-2"), paid("o-1"))

    await engine.process(batch)
    assert engine.lookup("orders", "o-1")[0] is Lookup.LOCAL
    assert engine.stores[("orders", 0)].get(b"o-1") is None  # not in RocksDB before its acks
    await engine.complete_pending()

    where, order = engine.lookup("orders", "o-1")
    assert (where, order["status"], order["paymentId"]) == (Lookup.LOCAL, "confirmed", "p-1")
    assert engine.lookup("orders", "o-2")[1]["status"] == "pending"
    # one changelog record per changed key (o-1 written twice in the batch), then the offsets
    assert [k for k, _ in changelog(broker, engine)] == [b"o-1", b"o-2", OFFSETS_KEY]
    assert changelog(broker, engine)[-1] == (OFFSETS_KEY, {"order-events": 2, SEQ: 1, RECORDS: 2})
    assert engine.changelog_topic("orders") == "order-views"  # the published views
    facts = [orjson.loads(r.value) for r in broker.log("customer-facts")]  # encoded on send
    assert [(f["orderId"], f["paidAmount"]) for f in facts] == [("o-1", 16.0), ("o-2", None)]
    await engine.flush_commits()  # offsets are committed in the background
    assert broker.committed[SOURCE] == 3
    store = engine.stores[("orders", 0)]
    assert (store.offset("order-events"), store.offset(CHANGELOG)) == (2, 2)


async def test_a_batch_with_no_successor_is_completed_as_soon_as_acknowledged(tmp_path):
    # Latency: with no backlog no next batch comes soon to complete this one;
    # it must reach RocksDB and the group's offsets on its acks alone.
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    await engine.process(publish(broker, placed("o-1")))
    store = engine.stores[("orders", 0)]
    assert store.get(b"o-1") is None and SOURCE not in broker.committed
    await asyncio.sleep(0.01)  # the acks arrive; no other batch, no empty fetch
    assert store.get(b"o-1")["status"] == "pending"
    assert broker.committed[SOURCE] == 1


async def test_a_slow_offset_commit_does_not_hold_the_next_batch(tmp_path):
    # Latency: an offset commit is a round trip to the group coordinator (tens of
    # ms on a busy broker); batches must not wait for it.
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    consumer = engine.transport.consumer
    release = asyncio.Event()
    commit = consumer.commit  # type: ignore[union-attr]

    async def slow_commit(offsets):  # type: ignore[no-untyped-def]
        await release.wait()
        await commit(offsets)

    consumer.commit = slow_commit  # type: ignore[union-attr, method-assign]
    await engine.process(publish(broker, placed("o-1")))
    await asyncio.wait_for(engine.complete_pending(), 1)  # not held by the commit
    await engine.process(publish(broker, paid("o-1")))  # the next batch goes on
    await asyncio.wait_for(engine.complete_pending(), 1)
    assert engine.stores[("orders", 0)].get(b"o-1")["status"] == "confirmed"
    assert SOURCE not in broker.committed
    release.set()
    await engine.flush_commits()
    assert broker.committed[SOURCE] == 2


async def test_a_failed_offset_commit_fails_the_next_batch(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)

    async def broken_commit(offsets):  # type: ignore[no-untyped-def]
        raise RuntimeError("coordinator says no")

    engine.transport.consumer.commit = broken_commit  # type: ignore[union-attr, method-assign]
    await engine.process(publish(broker, placed("o-1")))
    await engine.complete_pending()
    await asyncio.sleep(0.01)
    await engine.process(publish(broker, paid("o-1")))
    with pytest.raises(RuntimeError, match="coordinator says no"):
        await engine.complete_pending()


class HeldAcks:
    """Acks that arrive when the test says so (or fail)."""

    def __init__(self, acks) -> None:  # type: ignore[no-untyped-def]
        self.acks = acks
        self.arrived = asyncio.Event()
        self.error: Exception | None = None

    async def acknowledged(self):  # type: ignore[no-untyped-def]
        await self.arrived.wait()
        if self.error is not None:
            raise self.error
        return await self.acks.acknowledged()


def hold_acks(engine: ProjectionEngine) -> list[HeldAcks]:
    """Every submit from now on is acknowledged only when released; the list fills in order."""
    sender = engine.transport.sender  # type: ignore[union-attr]
    submit, held = sender.submit, []

    async def held_submit():  # type: ignore[no-untyped-def]
        acks = HeldAcks(await submit())
        held.append(acks)
        return acks

    sender.submit = held_submit  # type: ignore[method-assign]
    return held


async def release_all(held: list[HeldAcks]) -> None:
    """Let every ack arrive, also those of submits still to come."""
    while True:
        for acks in held:
            acks.arrived.set()
        await asyncio.sleep(0.001)


async def test_the_next_batch_is_applied_while_the_one_before_waits_for_its_acks(tmp_path):
    # Latency and throughput: the loop must not sit idle for a broker round trip.
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    held = hold_acks(engine)
    await asyncio.wait_for(engine.process(newest(broker, placed("o-1"))), 1)
    await asyncio.wait_for(
        engine.process(newest(broker, paid("o-1"))), 1
    )  # batch 1 still unacknowledged
    store = engine.stores[("orders", 0)]
    assert store.get(b"o-1") is None  # nothing in RocksDB before its acks
    assert len(held) == 2  # the outputs of both batches; no changelog before their acks
    held[1].arrived.set()  # batch 2's outputs first: its changelog still waits for batch 1's
    await asyncio.sleep(0.01)
    assert len(held) == 2 and broker.log(engine.changelog_topic("orders")) == []
    held[0].arrived.set()
    for _ in range(2):  # batch 1's changelog, then batch 2's, in that order
        while len(held) < 4:
            await asyncio.sleep(0.001)
    offsets = [
        orjson.loads(r.value)
        for r in broker.log(engine.changelog_topic("orders"))
        if r.key == OFFSETS_KEY
    ]
    assert offsets == [
        {"order-events": 0, SEQ: 1, RECORDS: 1},
        {"order-events": 1, SEQ: 2, RECORDS: 1},
    ]
    held[3].arrived.set()  # batch 2's changelog acknowledged first: it waits for batch 1
    await asyncio.sleep(0.01)
    assert store.get(b"o-1") is None
    held[2].arrived.set()
    await asyncio.wait_for(engine.complete_pending(), 1)
    order = store.get(b"o-1")  # batch 2 applied the payment on batch 1's order
    assert (order["status"], order["customerId"], order["paymentId"]) == ("confirmed", "c-9", "p-1")
    assert store.offset("order-events") == 1


async def test_a_batch_reads_a_partition_changed_two_batches_before(tmp_path):
    # Batches in flight are chained per table partition: one that did not touch
    # the partition must not hide the changes of an earlier one.
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    held = hold_acks(engine)
    await engine.process(newest(broker, placed("o-1")))
    await engine.process({})  # a batch of other partitions only
    await engine.process(newest(broker, paid("o-1")))
    releaser = asyncio.ensure_future(release_all(held))
    await asyncio.wait_for(engine.complete_pending(), 5)
    releaser.cancel()
    order = engine.stores[("orders", 0)].get(b"o-1")
    assert (order["status"], order["customerId"], order["eventCount"]) == ("confirmed", "c-9", 2)


async def test_a_failed_ack_fails_every_batch_that_read_its_changes(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    held = hold_acks(engine)
    await engine.process(newest(broker, placed("o-1")))
    await engine.process(newest(broker, paid("o-1")))
    held[0].error = RuntimeError("broker says no")
    for acks in held:
        acks.arrived.set()
    with pytest.raises(RuntimeError, match="broker says no"):
        await engine.complete_pending()
    with pytest.raises(RuntimeError, match="broker says no"):  # batch 2 read batch 1's changes
        await engine.complete_pending()
    store = engine.stores[("orders", 0)]
    assert store.get(b"o-1") is None and store.offset("order-events") == -1
    assert broker.log(engine.changelog_topic("orders")) == []


async def test_the_pipeline_waits_for_the_oldest_batch_beyond_its_depth(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    held = hold_acks(engine)
    for i in range(engine.pipeline.depth):
        await asyncio.wait_for(engine.process(newest(broker, placed(f"o-{i}"))), 1)
    assert len(engine.pipeline) == engine.pipeline.depth
    extra = asyncio.ensure_future(engine.process(newest(broker, placed("o-x"))))
    await asyncio.sleep(0.01)
    assert not extra.done()  # one batch too many: it waits for the oldest
    releaser = asyncio.ensure_future(release_all(held))
    await asyncio.wait_for(extra, 5)
    await asyncio.wait_for(engine.complete_pending(), 5)
    releaser.cancel()
    assert engine.stores[("orders", 0)].get(b"o-x")["status"] == "pending"


async def test_records_the_store_has_applied_are_skipped(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    batch = publish(broker, placed("o-1", total=20.0))
    await engine.process(batch)
    await engine.complete_pending()

    await engine.process(batch)  # redelivered, as after a rebalance
    await engine.complete_pending()
    assert engine.events_skipped == 1
    assert engine.lookup("orders", "o-1")[1]["totalAmount"] == 20.0
    # no view for a skipped record, only the offsets record of the batch
    assert [k for k, _ in changelog(broker, engine)] == [b"o-1", OFFSETS_KEY, OFFSETS_KEY]


async def test_a_crash_after_the_changelog_restores_the_batch_and_skips_its_redelivery(tmp_path):
    broker = FakeBroker()
    first = await open_engine(tmp_path, broker)
    batch = publish(broker, placed("o-1"), paid("o-1"))
    commit = BatchCommit(first)
    commit.apply(batch)
    await commit.run_side_effects()
    await commit.produce_outputs(first.transport.sender)  # type: ignore[arg-type]
    await commit.produce_changelog(first.transport.sender)  # type: ignore[arg-type]
    crash(first)  # changelog produced; RocksDB and the commit not yet
    assert SOURCE not in broker.committed

    second = await open_engine(tmp_path, broker)  # recovers from the changelog
    store = second.stores[("orders", 0)]
    assert (store.offset("order-events"), store.offset(CHANGELOG)) == (1, 1)
    assert second.lookup("orders", "o-1")[1]["status"] == "confirmed"
    assert second.transport.consumer.positions[SOURCE] == 2  # type: ignore[union-attr]

    await second.process(batch)  # the group redelivers what was never committed
    await second.complete_pending()
    assert second.events_skipped == 2
    assert [k for k, _ in changelog(broker, second)] == [b"o-1", OFFSETS_KEY, OFFSETS_KEY]
    await second.flush_commits()  # offsets are committed in the background
    assert broker.committed[SOURCE] == 2


async def test_a_crash_before_the_changelog_redoes_the_batch_once(tmp_path):
    broker = FakeBroker()
    first = await open_engine(tmp_path, broker)
    batch = publish(broker, placed("o-1"), paid("o-1"))
    commit = BatchCommit(first)
    commit.apply(batch)
    await commit.run_side_effects()
    await commit.produce_outputs(first.transport.sender)  # type: ignore[arg-type]
    crash(first)  # between the outputs and the changelog

    second = await open_engine(tmp_path, broker)
    assert second.lookup("orders", "o-1") == (Lookup.LOCAL, None)
    await second.process(batch)
    await second.complete_pending()
    order = second.lookup("orders", "o-1")[1]
    assert (order["status"], order["totalAmount"]) == ("confirmed", 16.0)
    # outputs are at least once: the redone batch emits its customer fact again
    assert len(broker.log("customer-facts")) == 2
    assert [k for k, _ in changelog(broker, second)] == [b"o-1", OFFSETS_KEY]


@projection("flaky", sources=(ORDER_EVENTS,))
class Flaky(Projection):
    """Stores each record's value; fails on b"boom"."""

    def apply(self, ctx: BatchContext, record) -> None:  # type: ignore[no-untyped-def]
        if record.value == b"boom":
            raise RuntimeError("the handler failed")
        ctx.tx.set(record.key, {"value": record.value.decode()})


async def test_a_failing_record_waits_in_retry_and_holds_its_key(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker, Flaky)
    for key, value in [(b"k1", b"boom"), (b"k2", b"fine"), (b"k1", b"after")]:
        broker.append(SOURCE.topic, 0, key, value)
    await engine.process({SOURCE: broker.log(SOURCE.topic)})
    await engine.complete_pending()

    store = engine.stores[("flaky", 0)]
    assert store.get(b"k2") == {"value": "fine"}
    assert store.get(b"k1") is None  # "after" is parked behind the failed record
    assert engine.outcomes == {Outcome.RETRIED: 1, Outcome.PARKED: 1}
    retried = broker.log(RETRY.topic)
    assert [r.value for r in retried] == [b"boom", b"after"]
    assert dict(retried[0].headers)["x-eventide-attempt"] == b"1"
    await engine.flush_commits()  # offsets are committed in the background
    assert broker.committed[SOURCE] == 3  # the source moves on; the retry topic holds k1

    await engine.process({RETRY: retried})  # due in 60 s: the retry partition is held
    consumer = engine.transport.consumer
    assert RETRY in consumer.paused and consumer.positions[RETRY] == 0  # type: ignore[union-attr]
    assert store.get(b"k1") is None


async def test_a_failed_batch_leaves_nothing_in_the_store(tmp_path):
    broker = FakeBroker()
    engine = await open_engine(tmp_path, broker)
    batch = publish(broker, placed("o-1"))
    commit = BatchCommit(engine)
    commit.apply(batch)
    commit.fail()
    (ctx,) = commit.contexts.values()
    assert ctx.tx.status is TransactionStatus.FAILED
    with pytest.raises(Exception, match="cannot prepare a failed transaction"):
        ctx.tx.prepare()
    assert engine.stores[("orders", 0)].get(b"o-1") is None

"""The saga projection's deadline index, on a real RocksDB store (no broker)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson

from agents.saga import CURSOR_KEY, SagaProjection, due_key
from schemas import new_event
from schemas.codecs import EventCodec
from streams.catalogue import TICK_KEY
from streams.projection import BatchContext
from streams.settings import Settings
from tables.store import PartitionStore
from tables.transaction import Transaction


def record(topic: str, key: bytes, value: bytes, ts: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic=topic, key=key, value=value, headers=[], timestamp=ts, partition=0, offset=0
    )


def test_a_restarted_store_finds_due_sagas_by_its_index_and_times_them_out(tmp_path):
    settings = Settings.from_env({"EVENTIDE_SAGA_STEP_TIMEOUT_MS": "2000"})
    codec = EventCodec(limits=settings.limits)
    projection = SagaProjection(settings, codec)
    store = PartitionStore(tmp_path / "p0")
    event = new_event(
        "order.placed",
        {
            "orderId": "o-1",
            "customerId": "c",
            "totalAmount": 1.0,
            "items": [{"sku": "a", "quantity": 1, "unitPrice": 1.0}],
        },
    )
    ctx = BatchContext(Transaction(store))
    placed_at = (int(time.time()) + 3600) * 1000  # a record from ahead of the clock: its time
    value = codec.encode_json(event)
    projection.apply(ctx, record(projection.orders_topic, b"o-1", value, placed_at))
    assert [s[0] for s in ctx.sends] == [settings.topic("inventory-commands")]
    ctx.tx.commit()
    due = placed_at + 2000
    second = due // 1000
    assert store.get(due_key(second)) == {"o-1": due} and store.get(CURSOR_KEY) == second
    store.close()

    store = PartitionStore(tmp_path / "p0")  # "restarted": only what RocksDB holds
    tick = projection.replies_topic
    ctx = BatchContext(Transaction(store))
    projection.apply(ctx, record(tick, TICK_KEY, orjson.dumps({"now": due - 1}), 0))
    assert ctx.sends == []
    projection.apply(ctx, record(tick, TICK_KEY, orjson.dumps({"now": due}), 0))
    assert [s[0] for s in ctx.sends] == [settings.topic("order-events")]  # saga_failed
    ctx.tx.commit()
    assert store.get(b"o-1")["status"] == "failed"
    assert store.get(due_key(second)) is None  # the index no longer holds it

"""Damaged or unrestorable table partitions: moved aside, reported, retried."""

from __future__ import annotations

import asyncio
import os

from agents.orders import OrdersProjection
from schemas.envelope import new_event
from streams.engine import ProjectionEngine
from streams.health import WorkerHealth
from tables.store import PartitionStore

from .fake_transport import FakeBroker, FakeTransport
from .test_engine import CODEC, RETRY, SOURCE, open_engine, publish, settings_for


def placed(order_id: str):  # type: ignore[no-untyped-def]
    data = {"orderId": order_id, "customerId": "c-1", "items": [], "totalAmount": 1.0}
    return new_event("order.placed", data)


async def _worker_with_orders(tmp_path, broker: FakeBroker) -> None:
    engine = await open_engine(tmp_path, broker)
    await engine.process(publish(broker, placed("o-1"), placed("o-2")))
    await engine.complete_pending()
    await engine.stop()


async def test_a_damaged_store_is_moved_aside_and_restored_from_its_changelog(tmp_path, caplog):
    broker = FakeBroker()
    await _worker_with_orders(tmp_path, broker)
    folder = tmp_path / "data" / "tables" / "orders" / "0"
    PartitionStore(folder).close()  # reopening flushes the WAL into an .sst
    sst = sorted(folder.glob("*.sst"))[0]
    with sst.open("r+b") as f:
        f.truncate(os.path.getsize(sst) // 2)

    engine = await open_engine(tmp_path, broker)
    assert engine.stores[("orders", 0)].get(b"o-2")["status"] == "pending"
    assert engine.transport.consumer.positions[SOURCE] == 2  # type: ignore[union-attr]
    aside = sorted(folder.parent.glob("0.damaged-*"))
    assert len(aside) == 1 and (aside[0] / sst.name).exists()
    assert f"moved it aside to {aside[0]}" in caplog.text
    assert "Sst file size mismatch" in caplog.text
    assert WorkerHealth(engine, stale_after=60).status()[0] == 200


class FailingReads(FakeTransport):
    """A changelog that cannot be read ``failures`` times."""

    def __init__(self, broker: FakeBroker, failures: int) -> None:
        super().__init__(broker)
        self.failures = failures

    async def read(self, topic, partition, start):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise ConnectionError("changelog unreachable")
        async for records in super().read(topic, partition, start):
            yield records


async def test_a_partition_that_cannot_be_restored_is_reported_and_retried(tmp_path):
    broker = FakeBroker()
    await _worker_with_orders(tmp_path, broker)
    settings = settings_for(tmp_path)
    transport = FailingReads(broker, failures=2)
    engine = ProjectionEngine(settings, [OrdersProjection(settings, CODEC)], transport=transport)
    now = [1000.0]
    engine.healer.clock = lambda: now[0]
    transport.consumer.assigned = {SOURCE, RETRY}
    await engine.on_assigned([SOURCE, RETRY])

    assert ("orders", 0) not in engine.stores
    assert transport.consumer.paused == {SOURCE, RETRY}  # nothing read past unapplied
    code, body = WorkerHealth(engine, stale_after=60).status()
    assert code == 503 and body["status"] == "degraded"
    assert body["failedPartitions"] == {
        "orders[0]": "ConnectionError: changelog unreachable (attempt 1; next in 1s)"
    }
    assert await engine.healer.heal_due() == set()  # not due yet
    now[0] += 1
    assert await engine.healer.heal_due() == set()  # fails again: back-off doubles
    assert "(attempt 2; next in 2s)" in engine.healer.report()["orders[0]"]
    now[0] += 2
    assert await engine.healer.heal_due() == {("orders", 0)}
    assert engine.stores[("orders", 0)].get(b"o-1")["status"] == "pending"
    assert WorkerHealth(engine, stale_after=60).status()[0] == 200


async def test_the_healer_resumes_the_source_partitions_once_restored(tmp_path):
    broker = FakeBroker()
    await _worker_with_orders(tmp_path, broker)
    settings = settings_for(tmp_path)
    transport = FailingReads(broker, failures=1)
    engine = ProjectionEngine(settings, [OrdersProjection(settings, CODEC)], transport=transport)
    transport.consumer.assigned = {SOURCE, RETRY}
    await engine.on_assigned([SOURCE, RETRY])
    assert transport.consumer.paused == {SOURCE, RETRY}

    healer = asyncio.ensure_future(engine.healer.run())
    try:
        for _ in range(40):  # the first retry comes after 1 s
            await asyncio.sleep(0.1)
            if not transport.consumer.paused:
                break
    finally:
        healer.cancel()
    assert transport.consumer.paused == set()
    assert transport.consumer.positions[SOURCE] == 2  # past what the store applied
    assert engine.healer.failed == {}

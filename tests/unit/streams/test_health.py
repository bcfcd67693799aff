"""/health and the lag refresh that probes the broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from streams.healing import StoreHealer
from streams.health import LagRefresher, WorkerHealth
from streams.metrics import EngineMetrics

TP = TopicPartition("order-events", 0)


class SlowConsumer:
    """end_offsets answers after ``delay`` seconds (or raises ``error``)."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error, self.calls = delay, error, 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def end_offsets(self, tps):  # type: ignore[no-untyped-def]
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return {TP: 42}

    async def position(self, tp: TopicPartition) -> int:
        return 40


def engine_with(consumer: SlowConsumer, now: list[float]) -> SimpleNamespace:
    engine = SimpleNamespace(
        consumer=consumer,
        metrics=EngineMetrics(),
        ready=True,
        polled=now[0],
        stores={},
        standby_stores={},
        events_processed=0,
    )
    engine.healer = StoreHealer(engine)  # type: ignore[arg-type]
    return engine


async def test_a_refresh_still_running_is_never_overlapped():
    now = [0.0]
    engine = engine_with(SlowConsumer(delay=0.2), now)
    health = WorkerHealth(engine, stale_after=6, clock=lambda: now[0])  # type: ignore[arg-type]
    lag = LagRefresher(engine, health, interval=0.05)  # type: ignore[arg-type]
    lag.tick()
    lag.tick()
    lag.tick()
    await asyncio.sleep(0.3)
    assert engine.consumer.calls == 1 and lag.skipped == 2
    assert engine.metrics.lag.labels(TP.topic, "0")._value.get() == 2  # the backlog shows


async def test_health_is_degraded_while_the_broker_does_not_answer_and_ready_after():
    now = [100.0]
    engine = engine_with(SlowConsumer(error=ConnectionError("Connect call failed")), now)
    health = WorkerHealth(engine, stale_after=6, clock=lambda: now[0])  # type: ignore[arg-type]
    lag = LagRefresher(engine, health, interval=1)  # type: ignore[arg-type]
    await lag.refresh()
    assert health.status()[0] == 200  # one failed probe is not an outage yet
    now[0] += 7
    engine.polled = now[0]
    code, body = health.status()
    assert code == 503 and body["status"] == "degraded"
    assert body["causes"] == [
        "broker unreachable: no answer for 7s: ConnectionError: Connect call failed"
    ]
    engine.consumer.error = None
    await lag.refresh()
    code, body = health.status()
    assert code == 200 and body["status"] == "ready" and "causes" not in body


async def test_an_engine_that_stopped_polling_is_degraded():
    now = [100.0]
    engine = engine_with(SlowConsumer(), now)
    health = WorkerHealth(engine, stale_after=6, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] += 10
    health.broker_answered()
    code, body = health.status()
    assert code == 503
    assert body["causes"] == [
        "consumer not fetching: the engine has not polled for 10s (a batch waits for the broker)"
    ]

"""Command API test kit: `eventide api` / `eventide relay` processes, a command
driver over HTTP, and a topic reader that counts what reached Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from api.store import OutboxStore, store_for
from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from tests.fixtures.broker import free_port
from tests.fixtures.worker import ChildProcess, settings_env


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh SQLite file or PostgreSQL database; needs no broker."""
    if backend == "postgresql":
        return str(request.getfixturevalue("make_database_url")())
    return f"sqlite://{tmp_path / 'outbox.sqlite3'}"


@pytest.fixture
def api_settings(
    database_url: str, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    """Factory: isolated settings with the test broker and a fresh outbox database
    (for the API and relay processes, which publish to Kafka)."""

    def make(**overrides: str) -> Settings:
        env = {
            "EVENTIDE_DATABASE_URL": database_url,
            "EVENTIDE_API_PORT": str(free_port()),
            **overrides,
        }
        return make_settings(**env)

    return make


def child_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings_env(settings)}
    env["EVENTIDE_DATABASE_URL"] = settings.database_url.reveal()
    return env


class Process(ChildProcess):
    """An `eventide api` or `eventide relay` child process with its own log."""

    def __init__(self, command: str, settings: Settings, log: Path) -> None:
        super().__init__(log)
        self.command = command
        self.settings = settings

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventide.cli", self.command],
                env=child_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.command == "api":
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.command} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.command} not ready after {timeout:.0f}s:\n{self.tail()}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[str, Settings], Process]]:
    """Start `eventide api|relay` children; all are stopped at the end of the test."""
    started: list[Process] = []

    def make(command: str, settings: Settings) -> Process:
        proc = Process(command, settings, tmp_path / f"{command}-{len(started)}.log")
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


@dataclass
class Accepted:
    """What the API accepted: event ids per entity, in command order."""

    by_entity: dict[str, list[str]] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entity: str, body: dict[str, Any]) -> None:
        self.by_entity.setdefault(entity, []).append(body["eventId"])
        self.answers.append(body)

    @property
    def ids(self) -> set[str]:
        return {i for ids in self.by_entity.values() for i in ids}


async def drive_orders(base_url: str, orders: int, prefix: str, concurrency: int = 16) -> Accepted:
    """Place, pay and ship orders over HTTP (three commands each); every answer must be 201."""
    accepted = Accepted()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with sem:
                r = await client.post(path, json=body)
            assert r.status_code == 201, (path, r.status_code, r.text)
            return dict(r.json())

        async def lifecycle(n: int) -> None:
            oid = f"{prefix}-{n:05d}"
            item = {"sku": "sku-book", "quantity": 1 + n % 3, "unitPrice": 12.5}
            accepted.add(oid, await post("/orders", {"orderId": oid, "customerId": "c-1",
                                                      "items": [item]}))  # fmt: skip
            accepted.add(oid, await post(f"/orders/{oid}/payment", {"paymentId": f"p-{oid}"}))
            accepted.add(
                oid,
                await post(f"/orders/{oid}/shipment", {"trackingNumber": "T", "carrier": "DHL"}),
            )

        await asyncio.gather(*(lifecycle(n) for n in range(orders)))
    return accepted


async def read_topics(settings: Settings) -> list[Envelope]:
    """Every event on the user and order topics, up to their current end, in log order
    per partition."""
    topics = [settings.topic(USER_EVENTS.name), settings.topic(ORDER_EVENTS.name)]
    consumer = AIOKafkaConsumer(**aiokafka_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        events: list[Envelope] = []
        codec = EventCodec(limits=settings.limits)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                events.extend(
                    codec.decode(r.value, r.headers) for r in records if r.offset < ends[tp]
                )
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return events
    finally:
        await consumer.stop()


def assert_exactly_published(events: list[Envelope], accepted: Accepted) -> int:
    """Zero lost, zero phantom, per-entity order kept; returns the duplicate count."""
    seen = {e.id for e in events}
    lost = accepted.ids - seen
    phantom = seen - accepted.ids
    assert not lost, f"{len(lost)} committed events never reached Kafka, e.g. {sorted(lost)[:3]}"
    assert not phantom, f"{len(phantom)} events on Kafka were never accepted: {sorted(phantom)[:3]}"
    first_seen: dict[str, list[str]] = {}
    for e in events:
        entity = e.data.get("orderId") or e.data.get("userId")
        order = first_seen.setdefault(entity, [])
        if e.id not in order:
            order.append(e.id)
    for entity, ids in accepted.by_entity.items():
        assert first_seen[entity] == ids, f"{entity}: events out of order"
    return len(events) - len(seen)


async def outbox_counts(settings: Settings) -> dict[str, int]:
    store: OutboxStore = store_for(settings)
    await store.open()
    try:
        return await store.outbox_counts()
    finally:
        await store.close()


def wait_until_published(settings: Settings, total: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = asyncio.run(outbox_counts(settings))
        if counts["pending"] == 0 and counts["published"] >= total:
            return
        time.sleep(0.3)
    pytest.fail(f"outbox not drained after {timeout:.0f}s: {counts}")

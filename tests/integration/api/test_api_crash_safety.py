"""Crash safety of the outbox, counted by consuming the topics: zero lost, zero phantom.

Each test runs against SQLite and against a real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from api.aggregate import CommandMeta, Decision, place_order
from api.relay import OutboxRelay
from api.store import store_for
from eventide.tools import devbroker
from schemas.envelope import new_event
from schemas.exceptions import ValidationError
from streams.topics import ensure_topics
from tests.fixtures.broker import free_port

from .conftest import (
    Accepted,
    assert_exactly_published,
    drive_orders,
    outbox_counts,
    read_topics,
    wait_until_published,
)

pytestmark = pytest.mark.integration


def test_api_killed_before_publishing_and_relay_killed_mid_batch_lose_nothing(
    api_settings, processes
):
    # The API commits but never publishes (no relay inside), then dies by SIGKILL.
    # Small relay batches: the relay must still be publishing when the test sees
    # its first rows out (with 100-row batches on PostgreSQL's parallel lanes it
    # once published all 1,200 between two polls).
    settings = api_settings(EVENTIDE_API_RELAY="false", EVENTIDE_RELAY_BATCH_SIZE="5")
    api = processes("api", settings).start()
    accepted = asyncio.run(drive_orders(api.url, orders=400, prefix="crash"))
    api.kill()
    total = len(accepted.ids)
    assert asyncio.run(outbox_counts(settings)) == {"pending": total, "published": 0}

    # A relay is killed while it publishes: some rows are out, the rest are not.
    first = processes("relay", settings).start()
    published = asyncio.run(_first_published(settings, lambda: first.tail()))
    first.kill()
    assert published < total, "the relay finished before it could be killed"

    # Two relays take over together; every row is published by one of them.
    second = processes("relay", settings).start()
    third = processes("relay", settings).start()
    wait_until_published(settings, total)
    second.stop()
    third.stop()

    events = asyncio.run(read_topics(settings))
    duplicates = assert_exactly_published(events, accepted)
    # Whatever was sent twice is the same event (same id), so consumers can drop it.
    assert len(events) == total + duplicates


async def _first_published(settings, tail, timeout: float = 90.0) -> int:
    """Poll the outbox on one connection until some row is published; the count."""
    store = store_for(settings)
    await store.open()
    try:
        deadline = time.monotonic() + timeout
        while (published := (await store.outbox_counts())["published"]) == 0:
            assert time.monotonic() < deadline, tail()
            await asyncio.sleep(0.005)
        return published
    finally:
        await store.close()


def test_a_rolled_back_transaction_publishes_nothing(api_settings):
    settings = api_settings()

    async def scenario() -> tuple[Accepted, list]:
        store = store_for(settings)
        await store.open()
        accepted = Accepted()
        try:
            item = {"sku": "s", "quantity": 1, "unitPrice": 2.0}
            ok = await store.execute(
                "order:kept", settings.topic("order-events"),
                lambda h: place_order(h, {"orderId": "kept", "customerId": "c", "items": [item],
                                          "currency": "EUR"}, CommandMeta()),
                None,
            )  # fmt: skip
            accepted.add("kept", ok.body)

            def half_written(history: list) -> Decision:
                good = new_event("order.placed", {"orderId": "doomed", "customerId": "c",
                                                  "items": [], "totalAmount": 0})  # fmt: skip
                # The second event has no orderId: writing it fails after the first
                # event's rows are in the transaction (SQLite's codec check speaks
                # first, PostgreSQL's key check: both name the field).
                return Decision([good, new_event("order.cancelled", {"reason": "x"})])

            with pytest.raises((ValidationError, ValueError), match=r"data\.orderId"):
                await store.execute("order:doomed", settings.topic("order-events"),
                                    half_written, None)  # fmt: skip
            assert await store.load_stream("order:doomed") == []
            assert await store.outbox_counts() == {"pending": 1, "published": 0}

            await ensure_topics(settings)
            relay = OutboxRelay(settings, store)
            assert await relay._connect(asyncio.Event())
            try:
                assert await relay.publish_once() == (1, 0)
            finally:
                assert relay._producer is not None
                await relay._producer.stop()
            assert await store.outbox_counts() == {"pending": 0, "published": 1}
            # After the retention period the published row is cleaned up.
            assert await store.cleanup(time.time() + 1) == 1
            assert await store.outbox_counts() == {"pending": 0, "published": 0}
        finally:
            await store.close()
        return accepted, await read_topics(settings)

    accepted, events = asyncio.run(scenario())
    assert assert_exactly_published(events, accepted) == 0
    assert [e.data["orderId"] for e in events] == ["kept"]


def test_broker_down_for_a_while_loses_nothing(kafka, make_settings, tmp_path, processes):
    """The API keeps accepting commands while Kafka is down; the relay catches up."""
    outage = float(os.environ.get("EVENTIDE_TEST_OUTAGE_SECONDS", "60"))
    settings = make_settings(
        EVENTIDE_DATABASE_URL=f"sqlite://{tmp_path / 'outbox.sqlite3'}",
        EVENTIDE_API_PORT=str(free_port()),
    )
    api = processes("api", settings).start()
    accepted = asyncio.run(drive_orders(api.url, orders=50, prefix="before"))
    devbroker.stop(kafka, echo=lambda _: None)
    try:
        started = time.monotonic()
        during = asyncio.run(drive_orders(api.url, orders=50, prefix="during"))
        assert asyncio.run(outbox_counts(settings))["pending"] >= len(during.ids)
        time.sleep(max(0.0, outage - (time.monotonic() - started)))
    finally:
        devbroker.start(kafka, echo=lambda _: None)
    for entity, ids in during.by_entity.items():
        accepted.by_entity[entity] = ids
    wait_until_published(settings, len(accepted.ids), timeout=120)
    events = asyncio.run(read_topics(settings))
    assert_exactly_published(events, accepted)

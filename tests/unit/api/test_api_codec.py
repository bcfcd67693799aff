"""The outbox stores and the relay write and read events through the codec only.

The stored form is unchanged (the JSON bytes of the envelope); an event the
registry does not know is refused before anything is written; the relay
takes the contract's headers from the event it decodes.
"""

from __future__ import annotations

import asyncio
import sqlite3

import orjson
import pytest

from api.aggregate import CommandMeta, Decision, place_order
from api.relay import OutboxRelay
from api.store import SqliteStore, store_for
from schemas import EncodeError, EventCodec, new_event
from streams.settings import Settings

ORDER = {
    "orderId": "o-1",
    "customerId": "c-1",
    "items": [{"sku": "sku-book", "quantity": 2, "unitPrice": 12.5}],
    "totalAmount": None,
    "currency": "EUR",
}


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "outbox.sqlite3", codec=EventCodec())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def rows(store: SqliteStore, table: str) -> list[bytes]:
    column = "body" if table == "events" else "value"
    with sqlite3.connect(store.path) as conn:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM {table} ORDER BY rowid")]


async def test_events_are_stored_as_their_json_bytes(store):
    decision = place_order([], ORDER, CommandMeta())
    await store.execute("order:o-1", "order-events", lambda history: decision, None)
    (event,) = decision.events
    expected = orjson.dumps(event.to_dict())  # the form on disk before the codec, too
    assert rows(store, "events") == rows(store, "outbox") == [expected]
    assert await store.load_stream("order:o-1") == [event]


async def test_an_event_without_a_schema_is_refused_and_nothing_is_written(store):
    teleported = new_event("order.teleported", {"orderId": "o-1"})
    with pytest.raises(EncodeError, match=r"order\.teleported"):
        await store.execute(
            "order:o-1", "order-events", lambda history: Decision([teleported]), None
        )
    assert rows(store, "events") == rows(store, "outbox") == []


def test_store_for_gives_the_store_a_codec_under_the_configured_limits(tmp_path):
    settings = Settings.from_env(
        {"EVENTIDE_STATE_DIR": str(tmp_path), "EVENTIDE_MAX_STRING_LENGTH": "100"}
    )
    store = store_for(settings)
    assert store.codec.limits == settings.limits


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send(self, topic, value, key, headers):
        self.sent.append((topic, value, key, headers))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_the_relay_sends_the_stored_bytes_with_the_codecs_headers(store, tmp_path):
    decision = place_order([], ORDER, CommandMeta(correlation_id="corr-1"))
    await store.execute("order:o-1", "order-events", lambda history: decision, None)
    relay = OutboxRelay(Settings.from_env({"EVENTIDE_STATE_DIR": str(tmp_path)}), store)
    producer = FakeProducer()
    relay._producer = producer  # type: ignore[assignment]
    assert await relay.publish_once() == (1, 0)
    ((topic, value, key, headers),) = producer.sent
    (event,) = decision.events
    assert (topic, value, key) == ("order-events", rows(store, "outbox")[0], b"o-1")
    assert headers == store.codec.headers(event)
    assert dict(headers)["correlation-id"] == b"corr-1"

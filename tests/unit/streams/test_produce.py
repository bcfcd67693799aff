"""EventPublisher encodes through the codec: JSON by default, Avro when asked."""

from __future__ import annotations

import asyncio

import pytest

from schemas import CONTENT_TYPE_AVRO, EncodeError, EventCodec, new_event
from streams import produce
from streams.produce import EventPublisher
from streams.settings import Settings

CODEC = EventCodec()


class FakeProducer:
    """Stands in for AIOKafkaProducer: records what is sent, acknowledges at once."""

    def __init__(self, **config) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send(self, topic, value, key, headers):
        self.sent.append((topic, value, key, headers))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def shipped(order_id="o-1"):
    return new_event(
        "order.shipped", {"orderId": order_id, "trackingNumber": "T1", "carrier": "DHL"}
    )


def publisher(monkeypatch, **kwargs) -> tuple[EventPublisher, FakeProducer]:
    monkeypatch.setattr(produce, "AIOKafkaProducer", FakeProducer)
    pub = EventPublisher(Settings.from_env({}), codec=CODEC, **kwargs)
    return pub, pub._producer  # type: ignore[return-value]


async def test_events_go_out_as_json_with_the_contract_headers(monkeypatch):
    pub, fake = publisher(monkeypatch)
    event = shipped()
    assert await pub.publish("order-events", [event]) == 1
    ((topic, value, key, headers),) = fake.sent
    assert (topic, value, key) == ("order-events", CODEC.encode_json(event), b"o-1")
    assert headers == CODEC.headers(event)


async def test_events_go_out_as_avro_when_asked(monkeypatch):
    pub, fake = publisher(monkeypatch, content_type=CONTENT_TYPE_AVRO)
    event = shipped()
    await pub.publish("order-events", [event])
    ((_, value, _, headers),) = fake.sent
    assert value[0] == 0 and CODEC.decode(value, headers) == event
    assert dict(headers)["content-type"] == b"application/avro"


async def test_an_unregistered_event_is_refused_before_anything_is_sent(monkeypatch):
    pub, fake = publisher(monkeypatch)
    with pytest.raises(EncodeError, match=r"order\.teleported"):
        await pub.publish("order-events", [new_event("order.teleported", {"orderId": "o-1"})])
    assert fake.sent == []

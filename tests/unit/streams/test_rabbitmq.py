"""The RabbitMQ bridge's routing and the relay's RabbitMQ messages, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader
from prometheus_client import CollectorRegistry

from schemas.codecs import CONTENT_TYPE_AVRO, EventCodec
from schemas.envelope import new_event
from schemas.exceptions import DecodeError, ValidationError
from streams.exceptions import SettingsError
from streams.metrics import BridgeMetrics
from streams.rabbitmq import RabbitBridge, RabbitPublisher, RoutingKeyError
from streams.settings import Settings

SETTINGS = Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "shop-", "EVENTIDE_PARTITIONS": "4"})
PLACED = new_event(
    "order.placed",
    {"orderId": "o-1", "customerId": "c-1", "items": [], "totalAmount": 5.0},
    source="shop",
)


def delivered(body: bytes, routing_key: str, content_type: str | None = None) -> DeliveredMessage:
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(
            consumer_tag="t", delivery_tag=7, exchange="events", routing_key=routing_key
        ),
        header=ContentHeader(properties=spec.Basic.Properties(content_type=content_type)),
        body=body,
        channel=None,  # type: ignore[arg-type]
    )


def bridge() -> RabbitBridge:
    return RabbitBridge(SETTINGS, BridgeMetrics(CollectorRegistry()))


def test_an_event_goes_to_its_topic_keyed_by_entity_id_with_the_contract_headers():
    topic, key, partition, headers = bridge().route(
        delivered(orjson.dumps(PLACED.to_dict()), "order.placed", "application/json")
    )
    assert (topic, key) == ("shop-order-events", b"o-1")
    assert 0 <= partition < 4
    assert dict(headers)["event-id"] == PLACED.id.encode()
    assert dict(headers)["content-type"] == b"application/json"


def test_an_avro_body_without_content_type_is_recognised_and_labelled():
    body = EventCodec().encode(PLACED, CONTENT_TYPE_AVRO)
    *_, headers = bridge().route(delivered(body, "order.placed"))
    assert dict(headers)["content-type"] == CONTENT_TYPE_AVRO.encode()


def test_a_routing_key_other_than_the_event_name_is_rejected_naming_both():
    with pytest.raises(RoutingKeyError, match=r"'order\.shipped'.*'order\.placed'"):
        bridge().route(delivered(orjson.dumps(PLACED.to_dict()), "order.shipped"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not an event", DecodeError),
        (orjson.dumps({**PLACED.to_dict(), "data": {"orderId": "o-1"}}), ValidationError),
    ],
)
def test_invalid_bodies_are_rejected_with_the_codec_error(body, error):
    with pytest.raises(error):
        bridge().route(delivered(body, "order.placed"))


class RecordingExchange:
    def __init__(self) -> None:
        self.published: list[tuple[Any, str]] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        self.published.append((message, routing_key))


def test_the_relay_publishes_persistent_messages_named_after_the_event():
    publisher = RabbitPublisher(SETTINGS)
    exchange = RecordingExchange()
    publisher._exchange = exchange  # type: ignore[assignment]
    headers = EventCodec().headers(PLACED)

    async def send() -> None:
        await (await publisher.send("order-events", b"{}", b"o-1", headers=headers))

    asyncio.run(send())
    message, routing_key = exchange.published[0]
    assert routing_key == "order.placed"
    assert message.message_id == PLACED.id
    assert message.delivery_mode == 2  # persistent
    assert message.content_type == "application/json"
    assert message.headers["event-name"] == "order.placed"


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("EVENTIDE_RABBITMQ_URL", "http://127.0.0.1:5672/", "expected amqp://"),
        ("EVENTIDE_RABBITMQ_URL", "amqp://u:secret@h:port/", "not a number"),
        ("EVENTIDE_RABBITMQ_BINDINGS", "user.*, order/*", "binding patterns"),
        ("EVENTIDE_RELAY_TARGET", "sqs", "kafka, rabbitmq"),
    ],
)
def test_a_bad_rabbitmq_setting_fails_naming_the_variable(var, value, says):
    with pytest.raises(SettingsError, match=var) as caught:
        Settings.from_env({var: value})
    assert says in str(caught.value)
    assert "secret" not in str(caught.value)

"""RabbitMQ out (issue #15, part 2): with EVENTIDE_RELAY_TARGET=rabbitmq the outbox
relay publishes the API's events to a RabbitMQ topic exchange, and a subscriber's
queue bound with ``order.*`` receives every order event, in order per order, as a
RabbitMQ consumer expects them (routing key = event name, persistent, message id
= event id, content type, the contract's headers). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import httpx
import orjson
import pytest

from streams.rabbitmq import declare_exchange
from streams.settings import Settings

from .conftest import drive_orders

pytestmark = pytest.mark.integration


async def bind_queue(settings: Settings, queue_name: str, pattern: str) -> None:
    """A subscriber's durable queue bound to the exchange, before anything is published."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel()
        exchange = await declare_exchange(settings, channel)
        queue = await channel.declare_queue(queue_name, durable=True)
        await queue.bind(exchange, routing_key=pattern)


async def receive(settings: Settings, queue_name: str, expected: int, timeout: float = 60) -> list:
    """Messages from the queue (acked), until ``expected`` came or ``timeout`` passed,
    then what else arrives within a second."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        got: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                if len(got) >= expected:
                    deadline = min(deadline, time.monotonic() + 1)
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            got.append(message)
        return got


def test_outbox_events_arrive_on_a_rabbitmq_queue_bound_with_order_star(
    api_settings, processes, rabbitmq
):
    tag = uuid.uuid4().hex[:8]
    settings = api_settings(
        EVENTIDE_RELAY_TARGET="rabbitmq",
        EVENTIDE_RABBITMQ_URL=rabbitmq,
        EVENTIDE_RABBITMQ_EXCHANGE=f"events-{tag}",
    )
    orders_queue = f"orders-{tag}"
    asyncio.run(bind_queue(settings, orders_queue, "order.*"))
    api = processes("api", settings).start()
    user = httpx.post(
        f"{api.url}/users",
        json={"userId": "ann", "email": "ann@example.com", "name": "Ann"},
        timeout=30,
    )
    assert user.status_code == 201, user.text
    accepted = asyncio.run(drive_orders(api.url, orders=20, prefix=f"rq-{tag}"))

    messages = asyncio.run(receive(settings, orders_queue, expected=len(accepted.ids)))
    assert sorted(m.message_id for m in messages) == sorted(accepted.ids)  # none lost, no user
    arrived: dict[str, list[str]] = {}
    for m in messages:
        event = orjson.loads(m.body)
        assert m.routing_key == event["name"] == m.headers["event-name"]
        assert m.message_id == event["id"] == m.headers["event-id"]
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.content_type == "application/json"
        arrived.setdefault(event["data"]["orderId"], []).append(m.message_id)
    assert arrived == accepted.by_entity  # each order's events in command order
    names = [orjson.loads(m.body)["name"] for m in messages]
    assert names.count("order.placed") == names.count("order.shipped") == 20

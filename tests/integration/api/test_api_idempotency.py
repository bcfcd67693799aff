"""Idempotent retries over HTTP, counted on the topic."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from .conftest import Accepted, assert_exactly_published, read_topics, wait_until_published

pytestmark = pytest.mark.integration

ORDER = {
    "orderId": "idem-1",
    "customerId": "c-1",
    "items": [{"sku": "sku-tea", "quantity": 3, "unitPrice": 4.25}],
}


async def _retries(base_url: str) -> tuple[list[httpx.Response], list[httpx.Response]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        headers = {"Idempotency-Key": "place-idem-1"}
        # The client retries eagerly: eight copies of one request, all at once.
        placed = await asyncio.gather(
            *(client.post("/orders", json=ORDER, headers=headers) for _ in range(8))
        )
        pay: dict[str, Any] = {"paymentId": "pay-1"}
        paid = [
            await client.post("/orders/idem-1/payment", json=pay, headers={"Idempotency-Key": "p"})
            for _ in range(3)
        ]
        return placed, paid


def test_retried_posts_with_the_same_key_act_once(api_settings, processes):
    settings = api_settings()
    api = processes("api", settings).start()
    placed, paid = asyncio.run(_retries(api.url))

    assert {r.status_code for r in placed + paid} == {201}
    assert len({r.text for r in placed}) == 1, "every retry gets the first answer"
    assert len({r.text for r in paid}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in placed) == 7
    first = placed[0].json()
    assert placed[0].headers["X-Correlation-Id"] == first["correlationId"]

    # The same key with another request is refused, naming the key.
    other = httpx.post(
        f"{api.url}/orders",
        json={**ORDER, "orderId": "idem-2"},
        headers={"Idempotency-Key": "place-idem-1"},
    )
    assert other.status_code == 422
    assert "place-idem-1" in other.json()["error"]
    # Without a key, a second identical POST is a new command: refused, order exists.
    again = httpx.post(f"{api.url}/orders", json=ORDER)
    assert again.status_code == 409

    accepted = Accepted()
    accepted.add("idem-1", first)
    accepted.add("idem-1", paid[0].json())
    wait_until_published(settings, 2)
    events = asyncio.run(read_topics(settings))
    assert assert_exactly_published(events, accepted) == 0
    assert [e.name for e in events] == ["order.placed", "order.payment_confirmed"]

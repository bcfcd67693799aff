"""The command API without a broker: validation, transitions, idempotency, outbox rows.

The relay is off (EVENTIDE_API_RELAY=false); what a command leaves behind is
read from the SQLite outbox (a real file in tmp_path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from api.app import create_api
from api.store import SqliteStore
from streams.settings import Settings
from tests.fixtures.keys import memory_keys

ORDER = {
    "orderId": "o-1",
    "customerId": "c-1",
    "items": [{"sku": "sku-book", "quantity": 2, "unitPrice": 12.5}],
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env(
        {
            "EVENTIDE_STATE_DIR": str(tmp_path),
            "EVENTIDE_API_RELAY": "false",
            "EVENTIDE_TOPIC_PREFIX": "unit-",
        }
    )


@pytest.fixture
async def client(settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(settings, keys=memory_keys())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        yield c


async def outbox(settings: Settings) -> list[tuple[str, str]]:
    """(topic, key) of every pending outbox row, read by a second connection."""
    store = SqliteStore(settings.state_dir / "outbox.sqlite3")
    await store.open()
    try:
        async with store.claim("reader", 1000) as claim:
            return [(r.topic, r.key) for r in claim.rows]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**ORDER, "customerId": ""}, "customerId", "String should match pattern"),
        ({**ORDER, "items": []}, "items", "List should have at least 1 item"),
        (
            {**ORDER, "items": [{"sku": "s", "quantity": 0, "unitPrice": 1}]},
            "items[0].quantity",
            "Input should be greater than 0",
        ),
        (
            {**ORDER, "items": [{"sku": "s", "quantity": "2", "unitPrice": 1}]},
            "items[0].quantity",
            "Input should be a valid integer",
        ),
        ({**ORDER, "currency": "euro"}, "currency", "String should match pattern"),
        ({**ORDER, "totalAmount": 99}, "totalAmount", "must equal the sum"),
        ({**ORDER, "discount": 5}, "discount", "Extra inputs are not permitted"),
        ({"orderId": "o-1", "items": ORDER["items"]}, "customerId", "Field required"),
    ],
)
async def test_invalid_orders_are_422_naming_field_and_reason(
    client, settings, body, field, reason
):
    r = await client.post("/orders", json=body)
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors
    assert await outbox(settings) == []


async def test_malformed_json_and_bad_user_are_422(client):
    r = await client.post("/orders", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"
    assert "not valid JSON" in r.json()["errors"][0]["reason"]
    r = await client.post("/users", json={"email": "not-an-email", "name": "Ann"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "email"


async def test_order_lifecycle_and_refused_transitions(client, settings):
    placed = await client.post("/orders", json=ORDER, headers={"X-Correlation-Id": "corr-1"})
    assert placed.status_code == 201
    body = placed.json()
    assert body["status"] == "pending" and body["totalAmount"] == 25.0
    assert body["correlationId"] == "corr-1" and body["eventId"]

    ship = await client.post("/orders/o-1/shipment", json={"trackingNumber": "T", "carrier": "DHL"})
    assert ship.status_code == 409
    assert "cannot be shipped before its payment is confirmed" in ship.json()["error"]

    wrong = await client.post("/orders/o-1/payment", json={"paymentId": "p", "amount": 1})
    assert wrong.status_code == 422
    assert wrong.json()["errors"] == [
        {"field": "amount", "reason": "must equal the order total 25.0"}
    ]
    assert (await client.post("/orders/o-1/payment", json={"paymentId": "p"})).json()["status"] == (
        "confirmed"
    )
    assert (await client.post("/orders/o-1/payment", json={"paymentId": "p"})).status_code == 409
    shipped = await client.post(
        "/orders/o-1/shipment", json={"trackingNumber": "T", "carrier": "DHL"}
    )
    assert shipped.json()["status"] == "shipped"
    cancel = await client.post("/orders/o-1/cancel", json={"reason": "late"})
    assert cancel.status_code == 409
    assert "a shipped order cannot be cancelled" in cancel.json()["error"]
    assert (await client.post("/orders", json=ORDER)).status_code == 409  # id taken

    missing = await client.post("/orders/nope/cancel", json={"reason": "x"})
    assert missing.status_code == 404
    assert "order 'nope' not found" in missing.json()["error"]

    assert await outbox(settings) == [("unit-order-events", "o-1")] * 3


async def test_idempotency_key_replays_the_first_answer(client, settings):
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/users", json={"email": "a@b.co", "name": "Ann"}, headers=headers)
    again = await client.post("/users", json={"email": "a@b.co", "name": "Ann"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and first.json()["userId"].startswith("u-")
    assert again.headers["Idempotent-Replayed"] == "true"
    reused = await client.post("/users", json={"email": "b@b.co", "name": "Bob"}, headers=headers)
    assert reused.status_code == 422
    assert await outbox(settings) == [("unit-user-events", first.json()["userId"])]


async def test_openapi_describes_every_command(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in [
        "/users",
        "/orders",
        "/orders/{order_id}/payment",
        "/orders/{order_id}/shipment",
        "/orders/{order_id}/cancel",
    ]:
        assert "post" in paths[path], path


async def test_personal_fields_are_written_encrypted(settings):
    keys = memory_keys()
    app = create_api(settings, keys=keys)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        body = {
            "userId": "u-pii",
            "email": "canary-7f3e@example.com",
            "name": "Ann Canary",
            "address": "1 Canary Wharf, London",
        }
        assert (await client.post("/users", json=body)).status_code == 201
        store = SqliteStore(settings.state_dir / "outbox.sqlite3")
        await store.open()
        try:
            async with store.claim("reader", 10) as claim:
                (row,) = claim.rows
        finally:
            await store.close()
        event = orjson.loads(row.value)
        assert event["version"] == "1.1.0"  # user.created 1.1 has the address
        shown = keys.ring.reveal("u-pii", event["data"], ("email", "name", "address"))
        assert shown == ({k: body[k] for k in ("email", "name", "address")}, False)
        await keys.forget("u-pii")
        again = await client.post("/users", json={**body, "userId": "u-pii"})
        assert again.status_code == 409
    for f in settings.state_dir.glob("outbox.sqlite3*"):
        for secret in (b"canary-7f3e", b"Ann Canary", b"Canary Wharf"):
            assert secret not in f.read_bytes()

"""Commands over HTTP → outbox → Kafka → orders projection → GET /orders/{id}."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from eventide.tools.demo import fetch_json

from .conftest import child_env

pytestmark = pytest.mark.integration


def poll_orders(base_url: str, expected: dict[str, dict[str, Any]], timeout: float = 90.0):
    """Fetch each order from the worker until it shows the expected fields."""
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    last: dict[str, Any] = {}
    while pending and time.monotonic() < deadline:
        for order_id, fields in list(pending.items()):
            code, body = fetch_json(f"{base_url}/orders/{order_id}")
            last[order_id] = (code, body)
            if code == 200 and all(body.get(k) == v for k, v in fields.items()):
                del pending[order_id]
        if pending:
            time.sleep(0.3)
    return {k: last.get(k) for k in pending}


def test_commands_over_http_reach_the_read_model(api_settings, processes, worker_factory):
    settings = api_settings()
    worker = worker_factory(settings).start()
    api = processes("api", settings).start()

    def post(path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        r = httpx.post(f"{api.url}{path}", json=body, timeout=30)
        assert r.status_code == status, (path, r.status_code, r.text)
        return dict(r.json())

    assert post("/users", {"userId": "ann", "email": "ann@example.com", "name": "Ann"})["userId"]
    lines = [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}]
    expected: dict[str, dict[str, Any]] = {}
    for n, fate in enumerate(["pending", "confirmed", "shipped", "cancelled", "paid-cancelled"]):
        oid = f"e2e-{n}"
        placed = post("/orders", {"orderId": oid, "customerId": "ann", "items": lines})
        assert placed["status"] == "pending" and placed["totalAmount"] == 16.0
        assert placed["eventId"] and placed["correlationId"]
        expected[oid] = {"status": "pending", "customerId": "ann", "totalAmount": 16.0}
        if fate in ("confirmed", "shipped", "paid-cancelled"):
            paid = post(f"/orders/{oid}/payment", {"paymentId": f"pay-{n}", "amount": 16.0})
            assert paid["status"] == "confirmed"
            expected[oid].update(status="confirmed", paymentId=f"pay-{n}", paidAmount=16.0)
        if fate == "shipped":
            post(f"/orders/{oid}/shipment", {"trackingNumber": "TRK1", "carrier": "DHL"})
            expected[oid].update(status="shipped", trackingNumber="TRK1", carrier="DHL")
        if fate in ("cancelled", "paid-cancelled"):
            post(f"/orders/{oid}/cancel", {"reason": "changed my mind"})
            expected[oid].update(status="cancelled", cancelReason="changed my mind")
    # Refused commands change nothing downstream.
    post("/orders/e2e-0/shipment", {"trackingNumber": "X", "carrier": "DHL"}, status=409)
    post("/orders/e2e-2/cancel", {"reason": "too late"}, status=409)

    assert poll_orders(worker.settings.web_url, expected) == {}

    history = subprocess.run(
        [sys.executable, "-m", "eventide.cli", "history", "e2e-2"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0, history.stderr
    names = [line.split()[2] for line in history.stdout.splitlines()]
    assert names == ["order.placed", "order.payment_confirmed", "order.shipped"]

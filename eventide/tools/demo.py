"""``eventide demo``: a realistic burst of orders, then read models over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from schemas.envelope import Envelope, new_event
from schemas.registry import Registry
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.httpaccess import bearer
from streams.kafka_clients import check_kafka
from streams.keys import KafkaKeyStore, PersonalFields
from streams.produce import EventPublisher
from streams.settings import Settings
from streams.topics import ensure_topics

SKUS = [("sku-book", 12.5), ("sku-mug", 8.0), ("sku-lamp", 39.9), ("sku-tea", 4.25)]
CARRIERS = ["DHL", "UPS", "PostNL", "GLS"]


@dataclass(frozen=True)
class DemoPlan:
    """The events of a demo burst and the status each order must end in."""

    events: list[Envelope]
    """Every event, in publication order (per order: placed first)."""
    expected_status: dict[str, str]
    """orderId → final status once every event is applied."""


def _follow(flow: list[Envelope], name: str, data: dict[str, Any], source: str) -> None:
    """Append the next event of an order's lifecycle, caused by the previous one."""
    first = flow[0]
    flow.append(
        new_event(
            name,
            {"orderId": first.data["orderId"], **data},
            source=source,
            correlation_id=first.correlation_id,
            causation_id=flow[-1].id,
        )
    )


def plan_orders(count: int, customers: int, seed: int) -> DemoPlan:
    """Order lifecycles: placed; most paid, many of those shipped; some cancelled."""
    rng = random.Random(seed)
    run = f"{seed:x}-{int(time.time())}"
    lifecycles: list[list[Envelope]] = []
    expected: dict[str, str] = {}
    for n in range(count):
        order_id = f"o-{run}-{n:05d}"
        lines = [
            (sku, rng.randint(1, 3), price) for sku, price in rng.sample(SKUS, rng.randint(1, 3))
        ]
        total = round(sum(qty * price for _, qty, price in lines), 2)
        data = {
            "orderId": order_id,
            "customerId": f"c-{rng.randrange(customers):04d}",
            "items": [{"sku": sku, "quantity": qty, "unitPrice": p} for sku, qty, p in lines],
            "totalAmount": total,
            "currency": "EUR",
        }
        flow = [new_event("order.placed", data, source="order-service")]
        roll = rng.random()
        if roll < 0.1:
            _follow(
                flow, "order.cancelled", {"reason": "customer changed their mind"}, "order-service"
            )
            expected[order_id] = "cancelled"
        elif roll < 0.85:
            payment = {"paymentId": f"p-{order_id}", "amount": total}
            _follow(flow, "order.payment_confirmed", payment, "payment-service")
            if rng.random() < 0.7:
                shipment = {
                    "trackingNumber": f"TRK{rng.randrange(10**9):09d}",
                    "carrier": rng.choice(CARRIERS),
                }
                _follow(flow, "order.shipped", shipment, "shipping-service")
                expected[order_id] = "shipped"
            else:
                expected[order_id] = "confirmed"
        else:
            expected[order_id] = "pending"
        lifecycles.append(flow)
    # Interleave orders as real traffic does, keeping each order's own sequence.
    events: list[Envelope] = []
    while lifecycles:
        flow = lifecycles[rng.randrange(len(lifecycles))]
        events.append(flow.pop(0))
        if not flow:
            lifecycles.remove(flow)
    return DemoPlan(events=events, expected_status=expected)


def fetch_json(url: str, timeout: float = 5.0, token: str = "") -> tuple[int, Any]:
    """GET a JSON document (with ``token`` as bearer token, when given); returns
    (status, body) and never raises on HTTP errors."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=bearer(token)), timeout=timeout
        ) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def wait_for_views(
    base_url: str, expected: dict[str, str], timeout: float, token: str = ""
) -> dict[str, dict[str, Any]]:
    """Poll ``GET /orders/{id}`` until each order shows its expected status."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    pending = dict(expected)
    while pending and time.monotonic() < deadline:
        for order_id, status in list(pending.items()):
            try:
                code, body = fetch_json(f"{base_url}/orders/{order_id}", token=token)
            except OSError:
                break  # the worker is not listening yet
            if code in (401, 403):
                raise PermissionError(
                    f"{base_url} answered {code}: {body}; set EVENTIDE_HTTP_TOKEN to a token "
                    "with the read role"
                )
            if code == 200 and body.get("status") == status:
                found[order_id] = body
                del pending[order_id]
        if pending:
            time.sleep(0.5)
    if pending:
        sample = ", ".join(f"{k} (want {v})" for k, v in list(pending.items())[:5])
        raise TimeoutError(
            f"{len(pending)} read models not up to date after {timeout:.0f}s at {base_url}: "
            f"{sample}. Is `eventide worker` running with the same settings?"
        )
    return found


def customer_ids(plan: DemoPlan) -> list[str]:
    """The customers who place the plan's orders."""
    return sorted({e.data["customerId"] for e in plan.events if e.name == "order.placed"})


async def user_events(settings: Settings, customers: list[str]) -> list[Envelope]:
    """A ``user.created`` per customer, personal fields encrypted with each
    customer's data key (EVENTIDE_PII_ENCRYPTION); forgotten customers are left out."""
    events = [
        new_event(
            "user.created",
            {"userId": c, "email": f"{c}@example.com", "name": f"Customer {c[2:]}"},
            source="user-service",
        )
        for c in customers
    ]
    if not settings.pii_encryption:
        return events
    personal = PersonalFields(Registry.load())
    keys = KafkaKeyStore(settings)
    try:
        await keys.wait_ready(timeout=30)
        encrypted = []
        for event in events:
            customer = event.data["userId"]
            if keys.ring.is_forgotten(customer):
                continue
            key = await keys.key_for(customer)
            data = personal.encrypt(key, event.name, event.data)
            encrypted.append(replace(event, data=data))
        return encrypted
    finally:
        await keys.stop()


async def publish_plan(settings: Settings, plan: DemoPlan) -> int:
    """Create the topics, publish a ``user.created`` per customer to ``user-events``
    and the plan's events to ``order-events``."""
    await check_kafka(
        settings,
        topics=[settings.topic(ORDER_EVENTS.name), settings.topic(USER_EVENTS.name)],
        purpose="eventide-demo",
    )
    await ensure_topics(settings)
    users = await user_events(settings, customer_ids(plan))
    async with EventPublisher(settings) as publisher:
        sent = await publisher.publish(settings.topic(USER_EVENTS.name), users)
        return sent + await publisher.publish(settings.topic(ORDER_EVENTS.name), plan.events)


def run_demo(
    settings: Settings,
    orders: int,
    show: int,
    seed: int,
    timeout: float,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Publish a burst of orders, then print ``show`` read models fetched over HTTP."""
    plan = plan_orders(orders, customers=max(1, orders // 5), seed=seed)
    started = time.monotonic()
    sent = asyncio.run(publish_plan(settings, plan))
    echo(
        f"published {sent} events for {orders} orders to "
        f"{settings.topic(USER_EVENTS.name)} and {settings.topic(ORDER_EVENTS.name)} "
        f"in {time.monotonic() - started:.2f}s"
    )
    rng = random.Random(seed)
    by_status: dict[str, list[str]] = {}
    for order_id, status in plan.expected_status.items():
        by_status.setdefault(status, []).append(order_id)
    chosen = [rng.choice(ids) for ids in by_status.values()][:show]
    chosen += rng.sample(sorted(plan.expected_status), min(show, orders))[: show - len(chosen)]
    views = wait_for_views(
        settings.web_url,
        {o: plan.expected_status[o] for o in chosen},
        timeout,
        token=settings.http_token.reveal(),
    )
    first = chosen[0]
    echo(f"\nGET {settings.web_url}/orders/{first}")
    echo(json.dumps(views[first], indent=2))
    echo(f"\n{'orderId':<24} {'status':<10} {'customer':<9} {'total':>8}  trackingNumber")
    for order_id in chosen:
        v = views[order_id]
        echo(
            f"{order_id:<24} {v['status']:<10} {v['customerId'] or '-':<9} "
            f"{v['totalAmount'] or 0:>8.2f}  {v['trackingNumber'] or '-'}"
        )
    return views

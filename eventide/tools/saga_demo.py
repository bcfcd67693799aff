"""``eventide saga show`` and ``eventide demo --sagas N``: watch order sagas run."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from schemas.envelope import Envelope, new_event
from schemas.exceptions import EventideError
from streams.catalogue import ORDER_EVENTS
from streams.produce import EventPublisher
from streams.settings import Settings
from streams.topics import ensure_topics

from .demo import SKUS, fetch_json
from .participant import SERVICES, run_participants

FINISHED = ("completed", "failed")


class SagasNotRunError(EventideError):
    """The worker asked does not run the saga projection."""


def fetch_saga(settings: Settings, order_id: str) -> tuple[int, Any]:
    """(HTTP status, body) of ``GET /sagas/{order_id}`` on the worker."""
    return fetch_json(f"{settings.web_url}/sagas/{order_id}", token=settings.http_token.reveal())


def format_saga(saga: dict[str, Any]) -> list[str]:
    """The lines ``eventide saga show`` prints."""
    lines = [
        f"saga {saga['sagaId']} of order {saga['orderId']}: {saga['status']}"
        + (f" (step {saga['step']}, attempt {saga['attempts']})" if saga["step"] else ""),
        f"  done: {', '.join(saga['done']) or '-'}; compensations run: "
        f"{', '.join(saga['compensationsRun']) or '-'}; pending: "
        f"{', '.join(saga['compensationsPending']) or '-'}",
    ]
    if saga["reason"]:
        lines.append(f"  failed at {saga['failedStep']}: {saga['reason']}")
    lines.append("  history:")
    for h in saga["history"]:
        extra = " ".join(f"{k}={v}" for k, v in h.items() if k not in ("at", "event"))
        lines.append(f"    {h['at']}  {h['event']:<22} {extra}")
    return lines


def placed_orders(count: int, seed: int) -> list[Envelope]:
    """``count`` order.placed events with fresh order ids."""
    rng = random.Random(seed)
    tag = f"{seed}-{int(time.time())}"
    events = []
    for i in range(count):
        items: list[dict[str, Any]] = [
            {"sku": sku, "quantity": rng.randint(1, 3), "unitPrice": price}
            for sku, price in rng.sample(SKUS, rng.randint(1, 3))
        ]
        total = round(sum(float(i["quantity"]) * float(i["unitPrice"]) for i in items), 2)
        data = {
            "orderId": f"saga-{tag}-{i:05d}",
            "customerId": f"c-{rng.randrange(50)}",
            "items": items,
            "totalAmount": total,
            "currency": "EUR",
        }
        events.append(new_event("order.placed", data, source="order-service"))
    return events


async def publish_orders(settings: Settings, events: list[Envelope]) -> None:
    """Publish ``events`` to order-events (creating the topics first)."""
    await ensure_topics(settings)
    async with EventPublisher(settings) as publisher:
        await publisher.publish(settings.topic(ORDER_EVENTS.name), events)


def wait_sagas(
    settings: Settings, order_ids: list[str], timeout: float, echo: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Poll ``GET /sagas/{id}`` until every saga finished; print progress each second."""
    deadline = time.monotonic() + timeout
    sagas: dict[str, dict[str, Any]] = {}
    last = 0.0
    while True:
        for oid in order_ids:
            if sagas.get(oid, {}).get("status") in FINISHED:
                continue
            code, body = fetch_saga(settings, oid)
            if code == 200:
                sagas[oid] = body
            elif code == 404 and "does not run" in str(body):
                raise SagasNotRunError(
                    f"the worker at {settings.web_url} does not run the order saga: "
                    "start it with EVENTIDE_SAGAS=true (or sagas in EVENTIDE_PROJECTIONS)"
                )
        done = sum(1 for s in sagas.values() if s["status"] in FINISHED)
        if time.monotonic() - last >= 1.0 or done == len(order_ids):
            last = time.monotonic()
            echo(f"  {done}/{len(order_ids)} sagas finished")
        if done == len(order_ids):
            return sagas
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(order_ids) - done} sagas unfinished after {timeout:.0f}s")
        time.sleep(0.5)


def run_saga_demo(
    settings: Settings, count: int, seed: int, timeout: float, echo: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Place ``count`` orders, run the three participants here, and summarise
    the sagas a running worker drives (fetched over HTTP)."""
    events = placed_orders(count, seed)
    order_ids = [e.data["orderId"] for e in events]

    async def run() -> dict[str, dict[str, Any]]:
        stop = asyncio.Event()
        participants = asyncio.ensure_future(run_participants(settings, SERVICES, stop, echo))
        try:
            await publish_orders(settings, events)
            echo(
                f"placed {count} orders; participants fail "
                f"{settings.participant_failure_rate:.0%} of steps"
            )
            return await asyncio.to_thread(wait_sagas, settings, order_ids, timeout, echo)
        finally:
            stop.set()
            await participants

    sagas = asyncio.run(run())
    durations = sorted(_ms(s["finishedAt"]) - _ms(s["startedAt"]) for s in sagas.values())
    by_status: dict[str, int] = {}
    for s in sagas.values():
        by_status[s["status"]] = by_status.get(s["status"], 0) + 1
    echo(", ".join(f"{n} {status}" for status, n in sorted(by_status.items())))
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    echo(f"saga duration: p50 {statistics.median(durations):.0f} ms, p99 {p99:.0f} ms")
    failed = next((s for s in sagas.values() if s["status"] == "failed"), None)
    for line in format_saga(failed or next(iter(sagas.values()))):
        echo(line)
    return sagas


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000

"""Records without a key, or under another entity's key, are dead-lettered, never applied."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from eventide.tools.demo import fetch_json
from schemas import new_event
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.test_failures import CODEC, _send, dead_letters, order, wait_for

pytestmark = pytest.mark.integration


def _placed(order_id: str, customer: str) -> object:
    data = {"orderId": order_id, "customerId": customer, "items": [], "totalAmount": 5.0}
    return new_event("order.placed", data, source="order-service")


def _dead_lettered_for_key(settings: Settings) -> float:
    _, text = _metrics(settings)
    pattern = (
        r'eventide_dead_lettered_total\{projection="orders",reason="key",topic="[^"]+"\} (\S+)'
    )
    return sum(float(v) for v in re.findall(pattern, text))


def _metrics(settings: Settings) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(f"{settings.web_url}/metrics", timeout=5) as response:
        return response.status, response.read().decode()


def test_keyless_and_foreign_keyed_records_are_dead_lettered_and_never_counted(
    make_settings, worker_factory
):
    settings = make_settings()
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    keyless = [_placed(f"o-nokey-{i}", "c-keys") for i in range(16)]
    foreign = _placed("o-foreign", "c-keys")
    good = _placed("o-keyed", "c-keys")
    records = [(None, CODEC.encode_json(e), e.headers()) for e in keyless]
    records.append((b"o-someone-else", CODEC.encode_json(foreign), foreign.headers()))
    records.append((b"o-keyed", CODEC.encode_json(good), good.headers()))
    asyncio.run(_send(settings, records))

    wait_for(lambda: order(settings, "o-keyed")[0] == 200, what="the keyed order")
    letters = wait_for(
        lambda: (lambda d: d if len(d) >= 17 else None)(dead_letters(settings)),
        timeout=30,
        what="17 dead letters",
    )
    by_id = {d.header("event-id"): d for d in letters}
    for event in keyless:
        message = by_id[event.id].header("dlq-error-message")
        assert message == (
            f'key: expected the order id "{event.data["orderId"]}" '
            "(events are keyed by orderId), got no key"
        )
        assert by_id[event.id].error_class == "RecordKeyError"
    assert "got b'o-someone-else'" in by_id[foreign.id].header("dlq-error-message")
    assert _dead_lettered_for_key(settings) == 17

    # The customer counts the keyed order only, once its fact went through.
    def customer() -> dict | None:
        code, body = fetch_json(f"{settings.web_url}/customers/c-keys")
        return body if code == 200 and body["orderCount"] >= 1 else None

    wait_for(customer, timeout=30, what="the customer's keyed order")
    time.sleep(1.0)
    assert customer()["orderCount"] == 1  # type: ignore[index]
    for event in keyless:
        assert order(settings, event.data["orderId"])[0] == 404
    # No confirmation went out for an order that was never applied.
    sent = settings.notify_path.read_text() if settings.notify_path.exists() else ""
    assert good.id in sent
    assert not any(e.id in sent for e in [*keyless, foreign])
    assert worker.proc is not None and worker.proc.poll() is None

"""Prometheus metrics of the command API and of the relay, scraped and parsed."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.broker import free_port

from .conftest import wait_until_published

pytestmark = pytest.mark.integration

ITEM = {"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) → value."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def post(base: str, path: str, body: dict[str, Any]) -> int:
    return httpx.post(f"{base}{path}", json=body, timeout=30).status_code


def run_commands(base: str, orders: int) -> int:
    """Place and pay ``orders`` orders, plus one refused and one invalid command;
    returns the events committed."""
    for n in range(orders):
        assert (
            post(base, "/orders", {"orderId": f"m-{n}", "customerId": "c", "items": [ITEM]}) == 201
        )
        assert post(base, f"/orders/m-{n}/payment", {"paymentId": f"p-{n}"}) == 201
    assert post(base, "/orders/m-0/payment", {"paymentId": "again"}) == 409
    assert post(base, "/orders", {"customerId": "c", "items": []}) == 422
    return 2 * orders


def wait_for(check, url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.3)


def assert_relay_metrics(samples: dict, events: int) -> None:
    assert value(samples, "eventide_relay_published_events_total") == events
    assert value(samples, "eventide_relay_publish_lag_seconds_count") == events
    assert 0 < value(samples, "eventide_relay_publish_lag_seconds_sum") < events * 60
    assert value(samples, "eventide_relay_publish_lag_seconds_bucket", le="+Inf") == events
    assert value(samples, "eventide_relay_publish_batches_total") >= 1
    assert value(samples, "eventide_relay_backlog_rows") == 0
    assert value(samples, "eventide_relay_errors_total", kind="send") == 0
    assert ("eventide_relay_errors_total", (("kind", "connect"),)) in samples


def test_api_metrics_count_commands_and_the_relay_inside(api_settings, processes):
    settings = api_settings()
    api = processes("api", settings).start()
    events = run_commands(api.url, orders=4)
    wait_until_published(settings, events)

    url = f"{api.url}/metrics"
    samples = wait_for(
        lambda s: (
            value(s, "eventide_relay_published_events_total") == events
            and value(s, "eventide_relay_backlog_rows") == 0
        ),
        url,
    )
    assert value(samples, "eventide_api_commands_total", command="place_order", status="201") == 4
    assert (
        value(samples, "eventide_api_commands_total", command="confirm_payment", status="201") == 4
    )
    assert (
        value(samples, "eventide_api_commands_total", command="confirm_payment", status="409") == 1
    )
    assert value(samples, "eventide_api_commands_total", command="place_order", status="422") == 1
    assert value(samples, "eventide_api_command_seconds_count", command="place_order") == 5
    assert (
        value(samples, "eventide_api_command_seconds_bucket", command="place_order", le="10.0") == 5
    )
    assert value(samples, "process_cpu_seconds_total") > 0
    assert_relay_metrics(samples, events)


def test_a_standalone_relay_serves_its_metrics(api_settings, processes):
    port = free_port()
    settings = api_settings(EVENTIDE_API_RELAY="false", EVENTIDE_RELAY_METRICS_PORT=str(port))
    api = processes("api", settings).start()
    events = run_commands(api.url, orders=3)
    # Without a relay inside, the API has no relay metrics.
    assert not any(name.startswith("eventide_relay") for name, _ in scrape(f"{api.url}/metrics"))

    processes("relay", settings).start()
    wait_until_published(settings, events)
    url = f"http://{settings.api_host}:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            samples = wait_for(
                lambda s: (
                    value(s, "eventide_relay_published_events_total") == events
                    and value(s, "eventide_relay_backlog_rows") == 0
                ),
                url,
            )
            break
        except httpx.TransportError:  # the relay's server is not up yet
            assert time.monotonic() < deadline, "the relay never served its metrics"
            time.sleep(0.3)
    assert_relay_metrics(samples, events)

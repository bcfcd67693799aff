"""/metrics of a running worker, lag under a paused consumer, `eventide check-targets`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.workload import Workload, make_workload, publish
from eventide.tools.demo import plan_orders, publish_plan
from eventide.tools.targets import TARGETS
from streams.settings import Settings

pytestmark = pytest.mark.integration

MAX_LAG = next(t.limit for t in TARGETS if t.name == "max_lag")


def metrics(settings: Settings) -> dict[str, float]:
    """Sample name → value summed over labels, parsed with prometheus-client's parser."""
    with urllib.request.urlopen(f"{settings.web_url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def wait_for(check: Callable[[dict[str, float]], bool], settings: Settings, timeout: float = 90):
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = metrics(settings)
        if check(seen):
            return seen
        time.sleep(0.25)
    pytest.fail(f"metrics never satisfied the condition; last: {seen}")


def check_targets(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventide.cli", "check-targets", "--url", settings.web_url,
         "--window", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def post(settings: Settings, path: str) -> None:
    request = urllib.request.Request(f"{settings.web_url}{path}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_metrics_lag_and_targets(make_settings, worker_factory):
    settings = make_settings(EVENTIDE_ADMIN_ENDPOINTS="true", EVENTIDE_METRICS_INTERVAL="0.5")
    worker_factory(settings).start()
    plan = plan_orders(150, customers=20, seed=3)
    asyncio.run(publish_plan(settings, plan))

    # healthy: every event counted, latency observed, keys in the table, no lag. The
    # events are counted when a batch is applied, before it is written and committed,
    # and the lag gauge may still hold a refresh from before the events arrived: wait
    # for the written batches (latency, keys) too, not only for the counts.
    seen = wait_for(
        lambda m: (
            m.get("eventide_events_total", 0) >= len(plan.events)
            and m.get("eventide_consumer_lag_records", -1) == 0
            and m.get("eventide_end_to_end_latency_seconds_count", 0) > 0
            and m.get("eventide_table_keys", 0) >= 150
        ),
        settings,
    )
    assert seen["eventide_end_to_end_latency_seconds_count"] > 0
    assert seen["eventide_table_keys"] >= 150
    assert seen["eventide_changelog_records_total"] > 0
    assert seen["eventide_rebalances_total"] >= 1
    healthy = check_targets(settings)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "max_lag" in healthy.stdout

    # starved: the consumer paused while more than the lag target arrives
    post(settings, "/admin/pause")
    work = make_workload(int(MAX_LAG // 2.4), customers=200, seed=9)
    half = len(work.orders) // 2
    first_half = Workload(users=work.users, orders=work.orders[:half])
    asyncio.run(publish(settings, first_half, "json"))
    first = wait_for(lambda m: m.get("eventide_consumer_lag_records", 0) >= half, settings)
    asyncio.run(publish(settings, Workload(users=[], orders=work.orders[half:]), "json"))
    grown = wait_for(
        lambda m: (
            m["eventide_consumer_lag_records"]
            > max(MAX_LAG, first["eventide_consumer_lag_records"])
        ),
        settings,
    )
    assert grown["eventide_events_total"] == first["eventide_events_total"]  # nothing processed
    starved = check_targets(settings)
    assert starved.returncode == 1, starved.stdout + starved.stderr
    assert "missed: " in starved.stderr and "max_lag" in starved.stderr
    assert "MISS" in starved.stdout

    # resumed: the backlog drains and the reported lag returns to zero
    post(settings, "/admin/resume")
    drained = wait_for(lambda m: m["eventide_consumer_lag_records"] == 0, settings, timeout=180)
    assert drained["eventide_events_total"] >= grown["eventide_events_total"] + len(work.orders)

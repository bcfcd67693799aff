"""A query that reaches a worker which does not own the key is answered by the owner."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from benchmarks.crash import wait_drained
from benchmarks.workload import expected_state, make_workload, publish
from eventide.tools.demo import fetch_json
from streams.outputs import KeyPartitioner
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.views import FORWARDED
from tests.fixtures.broker import free_port
from tests.fixtures.worker import settings_env

pytestmark = pytest.mark.integration


def _get(url: str, forwarded: bool = False) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={FORWARDED: "1"} if forwarded else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _owned(settings: Settings, table: str) -> set[int]:
    """The partitions of ``table`` a worker serves, once both workers have some."""
    partitions = fetch_json(f"{settings.web_url}/health")[1].get("partitions", [])
    return {int(p.split("[")[1].rstrip("]")) for p in partitions if p.startswith(f"{table}[")}


def test_a_query_for_a_key_another_worker_owns_is_routed_to_it(make_settings, worker_factory):
    first = make_settings(EVENTIDE_PARTITIONS="4")
    second = Settings.from_env(
        {
            **settings_env(first),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_DATA_DIR": str(first.data_dir) + "-b",
        }
    )
    work = make_workload(orders=400, customers=80, seed=61)
    asyncio.run(ensure_topics(first))
    asyncio.run(publish(first, work))
    exp_orders, exp_customers = expected_state(work)
    worker_factory(first).start()
    worker_factory(second).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        a, b = _owned(first, "orders"), _owned(second, "orders")
        if a and b and not a & b and len(a | b) == 4:
            break
        time.sleep(0.5)
    assert a and b and not a & b and len(a | b) == 4, (a, b)
    wait_drained(first)

    partition = KeyPartitioner(4)
    checked = 0
    for table, expected in (("orders", exp_orders), ("customers", exp_customers)):
        on_b = _owned(second, table)
        keys = [k for k in sorted(expected) if partition(k.encode()) in on_b][:20]
        assert keys, f"no {table} key on the second worker"
        for key in keys:
            url = f"{first.web_url}/{table}/{key}"
            code, body = _get(url, forwarded=True)  # A itself cannot answer: not its partition
            assert code == 503, (key, code, body)
            assert _get(url) == (200, expected[key])  # A routes it to B
            checked += 1
    assert checked == 40

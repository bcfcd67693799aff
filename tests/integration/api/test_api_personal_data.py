"""Personal data end to end: a canary e-mail through API → outbox → Kafka → worker,
never in plain text on any disk Kafka or the worker writes; then forgotten."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from schemas.envelope import new_event
from streams.catalogue import USER_EVENTS
from streams.produce import EventPublisher
from streams.settings import Settings

from .conftest import child_env

pytestmark = pytest.mark.integration


def poll_customer(
    settings: Settings, customer: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        code, body = fetch_json(f"{settings.web_url}/customers/{customer}")
        last = (code, body)
        if code == 200 and done(body):
            return dict(body)
        time.sleep(0.3)
    pytest.fail(f"customer {customer} never matched; last answer {last}")


def files_with(roots: list[Path], needle: bytes, since: float = 0.0) -> list[str]:
    """Every file under ``roots`` written at or after ``since`` (epoch seconds)
    that holds ``needle``: the shared test broker keeps every earlier test's
    segments, which cannot hold this test's data and are not read again."""
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and path.stat().st_mtime >= since and needle in path.read_bytes():
                hits.append(str(path))
    return hits


def eventide(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventide.cli", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_canary_email_is_never_stored_in_clear_and_is_forgotten(
    kafka, api_settings, processes, worker_factory, tmp_path
):
    settings = api_settings()
    started = time.time() - 1  # files older than the test cannot hold its data
    worker = worker_factory(settings).start()
    api = processes("api", settings).start()
    tag = uuid.uuid4().hex[:12]
    customer, canary, name = f"pii-{tag}", f"canary-{tag}@example.com", f"Canary {tag}"
    address = f"{tag} Canary Wharf, London"

    user = {"userId": customer, "email": canary, "name": name, "address": address}
    r = httpx.post(f"{api.url}/users", json=user, timeout=30)
    assert r.status_code == 201, r.text
    order = {"customerId": customer, "items": [{"sku": "sku-mug", "quantity": 1, "unitPrice": 8}]}
    assert httpx.post(f"{api.url}/orders", json=order, timeout=30).status_code == 201
    view = poll_customer(settings, customer, lambda v: v["orderCount"] == 1 and v["email"])
    assert (view["email"], view["name"], view["forgotten"]) == (canary, name, False)

    # Let the changelog batch and the broker's segments reach the files, then scan
    # every topic segment (the broker's log.dirs), changelog, RocksDB file and the outbox.
    time.sleep(2)
    roots = [devbroker.paths_for(kafka).data, settings.data_dir, tmp_path / "outbox.sqlite3"]
    roots = [p for p in roots if p.exists()]
    assert any(settings.data_dir.rglob("*"))
    for needle in (canary.encode(), name.encode(), address.encode()):
        assert files_with(roots, needle, started) == []
    # The scan does see the data: the ciphertext is in the read model and the topics.
    assert files_with([settings.data_dir], b"pii:v1:", started)
    assert files_with([devbroker.paths_for(kafka).data], customer.encode(), started)

    # An older producer's plaintext event is still accepted and shown.
    legacy = f"legacy-{tag}"

    async def publish_plaintext() -> None:
        event = new_event(
            "user.created",
            {"userId": legacy, "email": f"{legacy}@example.com", "name": "Old Producer"},
            source="legacy-service",
        )
        async with EventPublisher(settings) as publisher:
            await publisher.publish(settings.topic(USER_EVENTS.name), [event])

    asyncio.run(publish_plaintext())
    shown = poll_customer(settings, legacy, lambda v: v["email"] is not None)
    assert (shown["email"], shown["forgotten"]) == (f"{legacy}@example.com", False)

    # Crypto-shredding: the key goes, the statistics stay, a rebuild cannot bring it back.
    run = eventide(settings, "forget", customer)
    assert run.returncode == 0, run.stderr
    assert f"forgot customer {customer}: 1 data key(s) destroyed" in run.stdout
    forgotten = poll_customer(settings, customer, lambda v: v["forgotten"])
    assert (forgotten["email"], forgotten["name"], forgotten["orderCount"]) == (None, None, 1)
    run = eventide(settings, "rebuild", "customers", "--worker", settings.web_url)
    assert run.returncode == 0, run.stdout + run.stderr
    rebuilt = poll_customer(settings, customer, lambda v: v["forgotten"])
    assert (rebuilt["email"], rebuilt["name"], rebuilt["orderCount"]) == (None, None, 1)
    assert (
        httpx.post(
            f"{api.url}/users", json={"userId": customer, "email": canary, "name": name}, timeout=30
        ).status_code
        == 409
    )
    worker.stop()

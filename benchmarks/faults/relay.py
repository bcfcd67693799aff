"""The outbox relay killed in the middle of its claims, under commands and the stream.

The command API (SQLite outbox, relay outside it) takes order lifecycles
(place, pay, ship) from a driver thread while ``eventide relay`` is killed with
SIGKILL and restarted; the relay is always inside a claim under this load.
Then the order-events topic is read back: every accepted command's event must
be there (duplicates are allowed, the relay is at-least-once) and every order
of the API must be served by the worker with exactly its three events.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.crash import audit, classify
from benchmarks.procs import env_of, log
from streams.catalogue import ORDER_EVENTS
from streams.httpaccess import bearer
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings

from .harness import Case, Outcome


class Driver:
    """Order lifecycles to the command API at ``rate`` orders/s, in a thread."""

    def __init__(self, url: str, token: str, rate: int, tag: str) -> None:
        self.url, self.token, self.rate, self.tag = url, token, rate, tag
        self.orders: list[str] = []
        """Orders whose three commands were all accepted (201)."""
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="command-driver")

    def start(self) -> Driver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _post(self, path: str, body: dict[str, Any]) -> int:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **bearer(self.token)},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _run(self) -> None:
        n = 0
        started = time.monotonic()
        while not self._stop.is_set():
            if n >= (time.monotonic() - started) * self.rate:
                time.sleep(0.01)
                continue
            oid = f"o-api-{self.tag}-{n}"
            n += 1
            place = {
                "orderId": oid,
                "customerId": f"c-api-{n % 50}",
                "items": [{"sku": "sku-book", "quantity": 2, "unitPrice": 12.5}],
            }
            steps = (
                ("/orders", place),
                (f"/orders/{oid}/payment", {"paymentId": f"p-{oid}"}),
                (f"/orders/{oid}/shipment", {"trackingNumber": "T1", "carrier": "DHL"}),
            )
            for path, body in steps:
                status = self._post(path, body)
                if status != 201:
                    self.errors[f"{path.split('/')[-1]} {status}"] += 1
                    break
            else:
                self.orders.append(oid)


def _process(command: str, settings: Settings, case: Case) -> subprocess.Popen[bytes]:
    env = {**env_of(settings), "EVENTIDE_DATABASE_URL": settings.database_url.reveal()}
    with (case.dir / f"{command}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "eventide.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_api(url: str, token: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"eventide api exited with {proc.returncode}")
        try:
            request = urllib.request.Request(f"{url}/health", headers=bearer(token))
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("eventide api not ready after 60 s")


async def _event_ids(settings: Settings, prefix: str) -> Counter[str]:
    """event-id → copies on order-events, for the API's orders (``prefix``)."""
    topic = settings.topic(ORDER_EVENTS.name)
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    copies: Counter[str] = Counter()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def behind() -> bool:
            for tp, end in ends.items():
                if await consumer.position(tp) < end:
                    return True
            return False

        while await behind():
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    if r.key and r.key.decode().startswith(prefix):
                        headers = dict(r.headers)
                        copies[headers.get("event-id", b"").decode()] += 1
    finally:
        await consumer.stop()
    return copies


def relay_kill(case: Case) -> Outcome:
    """kill -9 of the relay 5 times (2 short) while commands come in."""
    n = 2 if case.opts.small else 5
    api_port = case.ports.take()
    settings = Settings.from_env(
        {
            **case.settings.to_env(),
            "EVENTIDE_DATABASE_URL": f"sqlite:///{case.dir / 'outbox.sqlite3'}",
            "EVENTIDE_API_PORT": str(api_port),
            "EVENTIDE_API_RELAY": "false",
            "EVENTIDE_RELAY_METRICS_PORT": "0",
        }
    )
    w = case.worker().start()
    case.begin()
    api = _process("api", settings, case)
    relay = _process("relay", settings, case)
    token = settings.http_token.reveal()
    url = f"http://127.0.0.1:{api_port}"
    tag = case.env["EVENTIDE_APP_ID"].rsplit("-", 1)[1]
    try:
        _wait_api(url, token, api)
        driver = Driver(url, token, rate=30, tag=tag).start()
        rng = random.Random(case.opts.seed)
        for i in range(1, n + 1):
            case.run_for(rng.uniform(1.5, 3.0))
            at = time.monotonic()
            relay.kill()
            relay.wait()
            relay = _process("relay", settings, case)
            took = case.recovery(at, w)
            log(f"  relay kill -9 #{i}/{n}: the worker caught up after {took:.1f} s")
        case.run_for(2)
        driver.stop()
        case.run_for(3)  # the relay's last batches
        outcome = case.verify(w)
        copies = asyncio.run(_event_ids(case.settings, f"o-api-{tag}-"))
        expected = {oid: {"eventCount": 3, "status": "shipped"} for oid in driver.orders}
        diffs = audit(w.settings.web_url, expected, "orders", token)
        diffs = {k: v for k, v in diffs.items() if not _matches(v, expected[k])}
        for key, value in classify(diffs, expected).items():
            setattr(outcome, key, getattr(outcome, key) + value)
        outcome.events += sum(copies.values())
        missing = 3 * len(driver.orders) - len(copies)
        if missing > 0:
            outcome.lost += missing
        dups = sum(c - 1 for c in copies.values())
        outcome.notes.append(
            f"{len(driver.orders)} API orders, {len(copies)} distinct events on the topic, "
            f"{dups} published twice by a killed relay and applied once; "
            f"command errors {dict(driver.errors) or 'none'}"
        )
        return outcome
    finally:
        for proc in (relay, api):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def _matches(got: tuple[int, Any], want: dict[str, Any]) -> bool:
    code, body = got
    return code == 200 and all(body.get(k) == v for k, v in want.items())

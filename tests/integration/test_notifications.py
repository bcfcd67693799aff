"""Notifications against the real broker: once per event id, through kill -9 and
a 30 s sink outage."""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.crash import publish_slowly, wait_drained
from benchmarks.workload import Workload, make_workload
from schemas.codecs import EventCodec
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, key_of
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.settings import Settings
from streams.topics import ensure_topics
from tables.readmodels.notifications import KINDS

pytestmark = pytest.mark.integration


def expected_ids(work: Workload) -> set[str]:
    return {e.id for e in [*work.users, *work.orders] if e.name in KINDS}


def file_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [orjson.loads(line)["eventId"] for line in path.read_bytes().splitlines()]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached after {timeout:.0f}s")


def test_each_notification_is_written_once_despite_duplicates_and_kill_9(
    make_settings, worker_factory, tmp_path
):
    out = tmp_path / "notifications.jsonl"
    settings = make_settings(
        EVENTIDE_BATCH_MAX_RECORDS="200",
        EVENTIDE_SESSION_TIMEOUT_MS="6000",
        EVENTIDE_NOTIFY_FILE=str(out),
    )
    work = make_workload(orders=1500, customers=300, seed=61, duplicate_rate=0.08)
    want = expected_ids(work)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    publisher = publish_slowly(settings, work, chunks=8, pause=0.6)
    rng = random.Random()
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.5))
        worker.kill()
        worker = worker_factory(settings).start()
    publisher.join(120)
    wait_drained(settings, timeout=120)
    wait_for(lambda: set(file_ids(out)) >= want, 30, "every notification in the file")
    counts = collections.Counter(file_ids(out))
    assert {k: n for k, n in counts.items() if n > 1} == {}  # none twice
    assert set(counts) == want  # none lost, none invented


class Webhook:
    """A webhook receiver in a thread: counts accepted requests per Idempotency-Key
    and answers 503 while ``down``."""

    def __init__(self, port: int) -> None:
        self.accepted: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self.down = False
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Idempotency-Key")
                with hook.lock:
                    if hook.down:
                        hook.refused += 1
                        status = 503
                    else:
                        assert key == orjson.loads(body)["eventId"]
                        hook.accepted[key] += 1
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_port() -> int:
    for port in range(56200, 56999):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 56200-56999")


def publish_steadily(
    settings: Settings, work: Workload, seconds: float, stop: threading.Event
) -> threading.Thread:
    """Users first, then the orders spread evenly over ``seconds``, in a thread."""

    async def run() -> None:
        codec = EventCodec()
        partition = KeyPartitioner(settings.partitions)
        producer = AIOKafkaProducer(
            **aiokafka_options(settings), acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            events = [(USER_EVENTS, e) for e in work.users] + [
                (ORDER_EVENTS, e) for e in work.orders
            ]
            ticks = int(seconds * 4)
            per_tick = -(-len(events) // ticks)
            for i in range(0, len(events), per_tick):
                if stop.is_set():
                    return
                futures = []
                for spec, e in events[i : i + per_tick]:
                    key = key_of(e).encode()
                    futures.append(
                        await producer.send(
                            settings.topic(spec.name),
                            codec.encode_json(e),
                            key=key,
                            partition=partition(key),
                            headers=codec.headers(e),
                        )
                    )
                await asyncio.gather(*futures)
                await asyncio.sleep(0.25)
        finally:
            await producer.stop()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread


def test_a_30_s_webhook_outage_under_steady_load_loses_none_and_sends_none_twice(
    make_settings, worker_factory
):
    outage = 30.0
    hook = Webhook(http_port())
    stop = threading.Event()
    try:
        settings = make_settings(
            EVENTIDE_NOTIFY_SINK="webhook",
            EVENTIDE_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{hook.server.server_port}/notify",
            EVENTIDE_NOTIFY_WEBHOOK_TIMEOUT="2",
            EVENTIDE_NOTIFY_BREAKER_FAILURES="5",
            EVENTIDE_NOTIFY_BREAKER_COOLDOWN="3",
            # attempts outlast the outage: 0.5+1+2+4+8*6 s of backoff, jitter ±20%
            EVENTIDE_RETRY_ATTEMPTS="10",
            EVENTIDE_RETRY_BACKOFF_MS="500",
            EVENTIDE_RETRY_BACKOFF_MAX_MS="8000",
        )
        work = make_workload(orders=600, customers=150, seed=67, duplicate_rate=0.05)
        want = expected_ids(work)
        asyncio.run(ensure_topics(settings))
        worker = worker_factory(settings).start()
        publisher = publish_steadily(settings, work, seconds=45, stop=stop)
        time.sleep(5)
        with hook.lock:
            hook.down = True
        time.sleep(outage)
        with hook.lock:
            hook.down = False
            sent_during_outage = hook.refused
        publisher.join(60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(hook.accepted) >= want:
            time.sleep(0.5)
        time.sleep(2)  # a late duplicate would show up now
        log = worker.output()
        missing = want - set(hook.accepted)
        assert not missing, (
            f"{len(missing)} of {len(want)} notifications never accepted; worker log: "
            f"{log.count('dead-letter')} dead-lettered, {log.count('retry ')} retries"
        )
        assert sent_during_outage > 0  # the sink really was down under load
        with hook.lock:
            twice = {k: n for k, n in hook.accepted.items() if n > 1}
            assert twice == {}
            assert set(hook.accepted) == want
        assert "circuit open" in worker.output()
    finally:
        stop.set()
        hook.close()

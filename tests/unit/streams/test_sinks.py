"""Notification sinks (a real file, a real local HTTP server) and the circuit breaker."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from streams.settings import SecretUrl, Settings
from streams.sinks import CircuitBreaker, FileSink, SinkError, WebhookSink, build_sink
from tables.readmodels.notifications import Notification


def note(event_id: str = "e-1", entity: str = "o-1") -> Notification:
    return Notification(
        event_id=event_id,
        kind="order_confirmation",
        event_name="order.placed",
        entity_id=entity,
        recipient="c-9",
        occurred_at="2026-11-27T15:00:00.000Z",
        correlation_id="corr-1",
        data={"orderId": entity, "totalAmount": 42.5},
    )


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def http_port() -> int:
    """A free port in this suite's range (56000-56999)."""
    for port in range(56100, 56999):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 56100-56999")


class Receiver:
    """A local webhook receiver: records requests, answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, dict]] = []
        self.status = 200
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.requests.append(
            (request.headers.get("Idempotency-Key"), orjson.loads(await request.read()))
        )
        return web.Response(status=self.status, text="down" if self.status >= 400 else "ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/notify", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = http_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield rec, f"http://127.0.0.1:{port}/notify"
    await runner.cleanup()


# -- contract: every sink ------------------------------------------------------


class SinkContract:
    """What the notification projection relies on, for every sink."""

    @pytest.fixture
    def make(self) -> Callable[[], tuple[object, Callable[[], list[str]]]]:
        raise NotImplementedError

    async def test_sent_and_flushed_notifications_arrive_once_each_in_order(self, make):
        sink, delivered = await make()
        for i in range(5):
            await sink.send(note(f"e-{i}", entity=f"o-{i}"))
        await sink.flush()
        await sink.close()
        assert delivered() == [f"e-{i}" for i in range(5)]

    async def test_a_sink_is_usable_again_after_close(self, make):
        sink, delivered = await make()
        await sink.send(note("e-1"))
        await sink.flush()
        await sink.close()
        await sink.send(note("e-2"))
        await sink.flush()
        await sink.close()
        assert delivered() == ["e-1", "e-2"]


class TestFileSinkContract(SinkContract):
    @pytest.fixture
    def make(self, tmp_path):
        async def make():
            path = tmp_path / "n.jsonl"
            return FileSink(path), lambda: [d["eventId"] for d in lines(path)]

        return make


class TestWebhookSinkContract(SinkContract):
    @pytest.fixture
    def make(self, receiver):
        rec, url = receiver

        async def make():
            return WebhookSink(SecretUrl(url), timeout=5), lambda: [k for k, _ in rec.requests]

        return make


# -- file sink -------------------------------------------------------------------


async def test_file_sink_writes_one_json_line_per_notification_with_sent_at(tmp_path):
    path = tmp_path / "deep" / "n.jsonl"
    sink = FileSink(path, clock=lambda: 1_700_000_000.5)
    await sink.send(note("e-1"))
    assert not path.exists() or path.read_bytes() == b""  # nothing before flush
    await sink.flush()
    [doc] = lines(path)
    assert doc == {**note("e-1").to_dict(), "sentAt": 1_700_000_000_500}
    await sink.close()


async def test_file_sink_skips_event_ids_already_in_the_file_after_a_restart(tmp_path):
    path = tmp_path / "n.jsonl"
    first = FileSink(path)
    await first.send(note("e-1"))
    await first.flush()
    await first.close()  # the crash window: accepted, never recorded as sent
    again = FileSink(path)
    await again.send(note("e-1"))
    await again.send(note("e-2"))
    await again.flush()
    assert [d["eventId"] for d in lines(path)] == ["e-1", "e-2"]
    await again.close()


async def test_file_sink_cuts_a_partial_last_line_left_by_a_crash(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_bytes(orjson.dumps({"eventId": "e-0"}) + b'\n{"eventId": "e-1", "ki')
    sink = FileSink(path)
    await sink.send(note("e-1"))  # the torn line was never acknowledged: send again
    await sink.flush()
    assert [d["eventId"] for d in lines(path)] == ["e-0", "e-1"]
    await sink.close()


async def test_two_writers_of_one_file_never_write_an_event_twice(tmp_path):
    path = tmp_path / "n.jsonl"
    a, b = FileSink(path), FileSink(path)
    await a.send(note("e-0"))
    await a.flush()
    await b.send(note("e-1"))
    await b.flush()
    await a.send(note("e-1"))  # b wrote it meanwhile: a reads it before writing
    await a.send(note("e-2"))
    await a.flush()
    assert [d["eventId"] for d in lines(path)] == ["e-0", "e-1", "e-2"]
    await a.close()
    await b.close()


async def test_file_sink_reports_an_unwritable_file(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = FileSink(blocker / "n.jsonl")
    with pytest.raises(OSError):
        await sink.send(note())


# -- webhook sink ------------------------------------------------------------------


async def test_webhook_posts_the_document_with_the_event_id_as_idempotency_key(receiver):
    rec, url = receiver
    sink = WebhookSink(SecretUrl(url))
    await sink.send(note("e-7"))
    await sink.close()
    assert rec.requests == [("e-7", note("e-7").to_dict())]


async def test_webhook_error_status_is_a_sink_error_naming_the_status(receiver):
    rec, url = receiver
    rec.status = 503
    sink = WebhookSink(SecretUrl(url))
    with pytest.raises(SinkError, match=r"answered HTTP 503 for event e-1: 'down'"):
        await sink.send(note("e-1"))
    await sink.close()


async def test_webhook_timeout_is_a_sink_error(receiver):
    rec, url = receiver
    rec.delay = 2.0
    sink = WebhookSink(SecretUrl(url), timeout=0.2)
    with pytest.raises(SinkError, match="did not take event e-1"):
        await sink.send(note("e-1"))
    await sink.close()


async def test_webhook_refused_connection_is_a_sink_error():
    sink = WebhookSink(SecretUrl(f"http://127.0.0.1:{http_port()}/notify"), timeout=2)
    with pytest.raises(SinkError, match="ClientConnectorError"):
        await sink.send(note("e-1"))
    await sink.close()


def test_build_sink_follows_the_settings(tmp_path):
    file_sink = build_sink(Settings.from_env({"EVENTIDE_STATE_DIR": str(tmp_path)}))
    assert isinstance(file_sink, FileSink)
    assert file_sink.path == tmp_path / "notifications.jsonl"
    hook = build_sink(
        Settings.from_env(
            {
                "EVENTIDE_NOTIFY_SINK": "webhook",
                "EVENTIDE_NOTIFY_WEBHOOK_URL": "https://u:secret@hooks.example.com/n",
                "EVENTIDE_NOTIFY_WEBHOOK_CONCURRENCY": "4",
            }
        )
    )
    assert isinstance(hook, WebhookSink)
    assert hook.concurrency == 4
    assert "secret" not in str(hook)


# -- circuit breaker -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_consecutive_failures_and_refuses_calls():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.allow()
    breaker.success()  # resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.state == "closed"
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open"
    clock.now += 9.9
    assert not breaker.allow()


def test_breaker_half_open_lets_one_probe_through_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=clock)
    breaker.allow()
    breaker.failure()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one at a time
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()


def test_breaker_failed_probe_opens_it_for_another_cooling_period():
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown=10, clock=clock)
    for _ in range(2):
        breaker.allow()
        breaker.failure()
    clock.now += 10
    assert breaker.allow()
    breaker.failure()  # one failed probe is enough
    assert breaker.state == "open"
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()

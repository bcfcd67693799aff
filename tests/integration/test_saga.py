"""The order saga against the real broker, one worker for the module.

A scripted participant (this test) reads the command topics and answers each
order as its script says: ``ok``, ``fail`` (the step's failure reply) or
``silent`` (no answer: the step times out). What the saga sent is read back
from the command topics, so each case asserts exactly the commands and
compensations a user would see there.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from click.testing import CliRunner

from eventide.cli import main
from eventide.tools.demo import fetch_json
from schemas import new_event
from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from streams.catalogue import ORDER_EVENTS, SAGA_COMMAND_TOPICS, SAGA_REPLIES
from streams.kafka_clients import aiokafka_options
from streams.produce import EventPublisher
from streams.settings import Settings
from tables.readmodels.saga import FORWARD
from tests.fixtures.broker import free_port
from tests.fixtures.worker import WorkerProcess

pytestmark = pytest.mark.integration

OK = {"inventory": "ok", "payment": "ok", "shipment": "ok"}
SCRIPTS: dict[str, dict[str, str]] = {
    "ok": OK,
    "fail-inventory": {**OK, "inventory": "fail"},
    "fail-payment": {**OK, "payment": "fail"},
    "fail-shipment": {**OK, "shipment": "fail"},
    "timeout-inventory": {**OK, "inventory": "silent"},
    "timeout-payment": {**OK, "payment": "silent"},
    "timeout-shipment": {**OK, "shipment": "silent"},
    # the first inventory.release is not acknowledged: the saga sends it again
    "release-retried": {**OK, "shipment": "fail", "inventory.release": "drop-once"},
    # every reply twice, and a payment.processed before anything was asked
    "duplicates": {**OK, "duplicate": "yes", "early": "payment.processed"},
}
EXPECTED = {
    "ok": ["inventory.reserve", "payment.process", "shipment.create"],
    "fail-inventory": ["inventory.reserve"],
    "fail-payment": ["inventory.reserve", "payment.process", "inventory.release"],
    "fail-shipment": [
        "inventory.reserve",
        "payment.process",
        "shipment.create",
        "payment.refund",
        "inventory.release",
    ],
    "timeout-inventory": ["inventory.reserve"],
    "timeout-payment": ["inventory.reserve", "payment.process", "inventory.release"],
    "timeout-shipment": [
        "inventory.reserve",
        "payment.process",
        "shipment.create",
        "payment.refund",
        "inventory.release",
    ],
    "release-retried": [
        "inventory.reserve",
        "payment.process",
        "shipment.create",
        "payment.refund",
        "inventory.release",
        "inventory.release",
    ],
    "duplicates": ["inventory.reserve", "payment.process", "shipment.create"],
}
SUCCESS = {
    "inventory.reserve": "inventory.reserved",
    "payment.process": "payment.processed",
    "shipment.create": "shipment.created",
}
FAILURE = {
    "inventory.reserve": "inventory.rejected",
    "payment.process": "payment.failed",
    "shipment.create": "shipment.failed",
}
ACK = {
    "inventory.release": ("inventory.released", "reservationId"),
    "payment.refund": ("payment.refunded", "paymentId"),
    "shipment.cancel": ("shipment.cancelled", "shipmentId"),
}
STEP_OF = {name: step for step, name in FORWARD.items()}


def reply_to(command: Envelope, name: str, extra: dict[str, Any]) -> Envelope:
    data = {"orderId": command.data["orderId"], "sagaId": command.data["sagaId"], **extra}
    return new_event(name, data, source="test", causation_id=command.id)


def answer(command: Envelope, script: dict[str, str], seen: dict[str, int]) -> list[Envelope]:
    """The replies the scripted participant sends to ``command``."""
    name = command.name
    if name in ACK:
        if script.get(name) == "drop-once" and seen[command.id] == 1:
            return []
        ack, field = ACK[name]
        extra: dict[str, Any] = {field: command.data[field]}
        if name == "payment.refund":
            extra["amount"] = command.data["amount"]
        return [reply_to(command, ack, extra)]
    how = script[STEP_OF[name]]
    if how == "silent":
        return []
    if how == "fail":
        extra = {"reason": "scripted failure"}
        if name == "inventory.reserve":
            extra["unavailableSkus"] = ["sku-1"]
        return [reply_to(command, FAILURE[name], extra)]
    oid = command.data["orderId"]
    result = {
        "inventory.reserve": {"reservationId": f"r-{oid}"},
        "payment.process": {"paymentId": f"p-{oid}", "amount": 10.0},
        "shipment.create": {"shipmentId": f"s-{oid}", "trackingNumber": "T1"},
    }[name]
    reply = reply_to(command, SUCCESS[name], result)
    return [reply, reply] if script.get("duplicate") else [reply]


async def scripted_participant(
    settings: Settings, scripts: dict[str, dict[str, str]], stop: asyncio.Event
) -> dict[str, list[Envelope]]:
    """Answer commands until ``stop``; return every command seen, per order."""
    codec = EventCodec(limits=settings.limits)
    topics = [settings.topic(t.name) for t in SAGA_COMMAND_TOPICS.values()]
    consumer = AIOKafkaConsumer(
        *topics,
        auto_offset_reset="earliest",
        group_id=f"{settings.app_id}-script",
        **aiokafka_options(settings),
    )
    commands: dict[str, list[tuple[int, Envelope]]] = {}
    seen: dict[str, int] = {}
    await consumer.start()
    try:
        async with EventPublisher(settings, codec) as publisher:
            end: dict[Any, int] | None = None
            while end is None or any(await _behind(consumer, end)):
                if end is None and stop.is_set():  # drain what was sent before the stop
                    end = await consumer.end_offsets(list(consumer.assignment()))
                batch = await consumer.getmany(timeout_ms=100)
                replies: list[Envelope] = []
                for records in batch.values():
                    for record in records:
                        command = codec.decode(record.value, record.headers)
                        oid = command.data["orderId"]
                        commands.setdefault(oid, []).append((record.timestamp, command))
                        seen[command.id] = seen.get(command.id, 0) + 1
                        replies += answer(command, scripts[oid], seen)
                if replies:
                    await publisher.publish(settings.topic(SAGA_REPLIES.name), replies)
    finally:
        await consumer.stop()
    # in the order the saga sent them (the topics are read side by side)
    return {oid: [c for _, c in sorted(cs, key=lambda x: x[0])] for oid, cs in commands.items()}


async def _behind(consumer: AIOKafkaConsumer, end: dict[Any, int]) -> list[bool]:
    return [await consumer.position(tp) < offset for tp, offset in end.items()]


def placed(order_id: str) -> Envelope:
    data = {
        "orderId": order_id,
        "customerId": "c-1",
        "totalAmount": 10.0,
        "currency": "EUR",
        "items": [{"sku": "sku-1", "quantity": 1, "unitPrice": 10.0}],
    }
    return new_event("order.placed", data, source="test")


def get(settings: Settings, path: str) -> tuple[int, Any]:
    return fetch_json(f"{settings.web_url}{path}")


def wait_finished(settings: Settings, order_ids: list[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    sagas: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for oid in order_ids:
            code, body = get(settings, f"/sagas/{oid}")
            if code == 200:
                sagas[oid] = body
        if all(sagas.get(o, {}).get("status") in ("completed", "failed") for o in order_ids):
            return sagas
        time.sleep(0.3)
    raise AssertionError(f"sagas not finished: { {o: sagas.get(o) for o in order_ids} }")


@pytest.fixture(scope="module")
def saga_run(kafka: Settings, tmp_path_factory) -> Iterator[tuple[Settings, dict, dict, dict]]:
    """One worker; every scripted order placed; run until every saga finished."""
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("saga")
    settings = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": kafka.broker_url,
            "EVENTIDE_APP_ID": f"it-saga-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"it-saga-{tag}-",
            "EVENTIDE_PARTITIONS": "4",
            "EVENTIDE_DATA_DIR": str(root / "data"),
            "EVENTIDE_STATE_DIR": str(root / "state"),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_HTTP_RATE_LIMIT": "0",
            "EVENTIDE_SAGAS": "true",
            # generous: the machine is shared, and a slow answer must not read as a timeout
            "EVENTIDE_SAGA_STEP_TIMEOUT_MS": "8000",
            "EVENTIDE_SAGA_RETRY_MS": "2000",
            "EVENTIDE_SAGA_TICK_MS": "250",
        }
    )
    worker = WorkerProcess(settings, root / "worker.log").start()
    scripts = {f"{case}-{tag}": script for case, script in SCRIPTS.items()}

    async def run() -> tuple[dict, dict]:
        stop = asyncio.Event()
        task = asyncio.ensure_future(scripted_participant(settings, scripts, stop))
        async with EventPublisher(settings) as publisher:
            await publisher.publish(settings.topic(ORDER_EVENTS.name), map(placed, scripts))
            for oid, script in scripts.items():
                if "early" in script:  # out of order: an answer to nothing the saga sent
                    early = new_event(
                        script["early"],
                        {"orderId": oid, "sagaId": "x", "paymentId": "p-early", "amount": 1.0},
                        source="test",
                    )
                    await publisher.publish(settings.topic(SAGA_REPLIES.name), [early])
        sagas = await asyncio.to_thread(wait_finished, settings, list(scripts))
        await asyncio.sleep(3)  # long enough for a stray resend to show
        stop.set()
        return sagas, await task

    try:
        sagas, commands = asyncio.run(run())
        yield settings, scripts, sagas, commands
    finally:
        worker.stop()


def test_each_failure_and_timeout_ends_with_exactly_the_compensations_of_the_steps_done(
    saga_run,
):
    _, scripts, sagas, commands = saga_run
    for oid in scripts:
        case = oid.rsplit("-", 1)[0]
        sent = [c.name for c in commands.get(oid, [])]
        assert sent == EXPECTED[case], oid
        saga = sagas[oid]
        if case in ("ok", "duplicates"):
            assert saga["status"] == "completed", saga
            assert saga["compensationsRun"] == []
            continue
        assert saga["status"] == "failed", saga
        step = case.rsplit("-", 1)[-1] if case != "release-retried" else "shipment"
        assert saga["failedStep"] == step
        assert saga["timedOut"] is case.startswith("timeout")
        done = saga["done"]
        assert saga["compensationsRun"] == list(reversed(done))
        assert saga["compensationsPending"] == []
        if case.startswith("timeout"):
            assert saga["reason"].startswith(f"timeout: no reply to {FORWARD[step]}")
        else:
            assert "scripted failure" in saga["reason"]
    # a resent compensation carries the same command id
    releases = [
        c.id
        for c in commands[next(o for o in scripts if o.startswith("release"))]
        if c.name == "inventory.release"
    ]
    assert len(releases) == 2 and releases[0] == releases[1]


def test_duplicated_and_out_of_order_replies_change_nothing(saga_run):
    settings, scripts, sagas, _ = saga_run
    oid = next(o for o in scripts if o.startswith("duplicates"))
    saga = sagas[oid]
    assert saga["done"] == ["inventory", "payment", "shipment"]
    # 3 duplicates + the early payment.processed, each recorded in the history
    assert saga["ignoredReplies"] == 4
    ignored = [h for h in saga["history"] if "ignored" in h]
    assert len(ignored) == 4
    # the order read model shows the outcome
    code, order = get(settings, f"/orders/{oid}")
    assert code == 200 and order["saga"]["outcome"] == "completed"
    code, failed = get(settings, f"/orders/{next(o for o in scripts if o.startswith('fail-pay'))}")
    assert failed["saga"]["outcome"] == "failed" and failed["saga"]["failedStep"] == "payment"
    code, metrics = 0, None
    with __import__("urllib.request").request.urlopen(f"{settings.web_url}/metrics") as r:
        metrics = r.read().decode()
    assert 'eventide_sagas_total{outcome="completed"} 2.0' in metrics
    assert 'eventide_sagas_total{outcome="compensated"} 7.0' in metrics
    assert 'eventide_sagas_total{outcome="timed_out"} 3.0' in metrics


def test_saga_show_prints_the_state_and_history(saga_run):
    settings, scripts, _, _ = saga_run
    oid = next(o for o in scripts if o.startswith("fail-shipment"))
    result = CliRunner().invoke(main, ["saga", "show", oid], env=settings.to_env())
    assert result.exit_code == 0, result.output
    assert f"of order {oid}: failed" in result.output
    assert "compensations run: payment, inventory" in result.output
    assert "shipment.failed" in result.output and "payment.refund" in result.output
    missing = CliRunner().invoke(main, ["saga", "show", "no-such-order"], env=settings.to_env())
    assert missing.exit_code == 1 and "404" in missing.output

"""One contract on both paths, against the real broker (issue #13, part 5).

Every hostile value of tests/fixtures/contract.py goes through the command API
(in process: it must answer 422 naming the field) and, as the event another
producer would publish, straight to its topic, all in one go, to one worker
(it must dead-letter the record with the field in the reason). Valid controls
pass both ways and reach the read models.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from eventide.tools.demo import fetch_json
from eventide.tools.dlq import DeadLetter, read_dead_letters
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.contract import Case, api_verdicts, hostile_cases, valid_cases

pytestmark = pytest.mark.integration


async def _publish(settings: Settings, cases: list[Case]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for case in cases:
            kind = USER_EVENTS if case.event.name.startswith("user.") else ORDER_EVENTS
            key, value, headers = case.record()
            await producer.send(settings.topic(kind.name), value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def _wait_for_letters(settings: Settings, count: int, timeout: float = 90.0) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    letters: list[DeadLetter] = []
    while time.monotonic() < deadline:
        letters = asyncio.run(read_dead_letters(settings))
        if len(letters) >= count:
            return letters
        time.sleep(0.5)
    pytest.fail(f"{len(letters)} dead letters after {timeout:.0f}s, expected {count}")


def _view(settings: Settings, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = fetch_json(f"{settings.web_url}/{what}")
        if code == 200:
            return dict(body)
        time.sleep(0.3)
    pytest.fail(f"GET /{what} did not answer 200 after {timeout:.0f}s")


def test_the_api_and_the_worker_refuse_the_same_values_naming_the_field(
    make_settings, worker_factory, tmp_path
):
    hostile, valid = hostile_cases(), valid_cases()
    # The API's verdicts: 422 naming the field for every hostile value, valid controls pass.
    api_fields = asyncio.run(api_verdicts(str(tmp_path / "api"), hostile + valid))
    assert api_fields == {c.label: c.field or None for c in hostile + valid}

    # The worker's: every hostile record dead-lettered naming the field, the controls applied.
    settings = make_settings()
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    asyncio.run(_publish(settings, hostile + valid))
    letters = _wait_for_letters(settings, len(hostile))
    by_id = {d.header("event-id"): d for d in letters}
    worker_fields = {}
    for case in hostile:
        letter = by_id.get(case.event.id)
        assert letter is not None, f"{case.label}: not dead-lettered"
        assert letter.error_class == "ValidationError", letter.header("dlq-error-message")
        path, _, reason = letter.header("dlq-error-message").partition(": expected ")
        assert reason, letter.header("dlq-error-message")
        worker_fields[case.label] = path.removeprefix("data.")
    assert worker_fields == {c.label: api_fields[c.label] for c in hostile}
    for case in valid:
        assert case.event.id not in by_id, f"{case.label}: dead-lettered"
    order = _view(settings, f"orders/{valid[0].key}")
    assert order["totalAmount"] == 3.0 and order["status"] == "pending"
    assert _view(settings, f"customers/{valid[1].key}")["name"] == "Ann"
    assert _view(settings, f"orders/{valid[2].key}")["status"] == "cancelled"
    assert len(asyncio.run(read_dead_letters(settings))) == len(hostile)
    assert worker.proc is not None and worker.proc.poll() is None

"""The retry/dead-letter router: per-key order, attempts, stale copies, not-before."""

from types import SimpleNamespace

import pytest

from schemas.exceptions import DecodeError
from streams.failures import STATE_PREFIX, FailureRouter, Outcome, RetryPolicy
from streams.projection import BatchContext
from tables.store import PartitionStore
from tables.transaction import Transaction


class Projection:
    table = "orders"
    ordered_retries = True

    def __init__(self):
        self.failing: set[bytes] = set()
        self.applied: list[bytes] = []

    def apply(self, ctx, record):
        if record.value in self.failing:
            raise ConnectionError(f"down for {record.value!r}")
        if record.value == b"garbage":
            raise DecodeError("value is not valid JSON")
        self.applied.append(record.value)


def rec(value, offset, key=b"k", topic="order-events", headers=()):
    return SimpleNamespace(
        topic=topic,
        partition=0,
        offset=offset,
        key=key,
        value=value,
        headers=tuple(headers),
        timestamp=0,
    )


def as_retry_record(sent, offset):
    topic, key, value, headers, _ = sent
    return rec(value, offset, key=key, topic=topic, headers=headers)


@pytest.fixture
def setup(tmp_path):
    clock = [1_000_000]
    router = FailureRouter(RetryPolicy(attempts=2, backoff_ms=100, jitter=0.0), lambda: clock[0])
    ctx = BatchContext(Transaction(PartitionStore(tmp_path / "p0")))
    return router, ctx, Projection(), clock


def test_later_records_of_a_failing_key_wait_behind_it_in_order(setup):
    router, ctx, proj, clock = setup
    proj.failing.add(b"e1")
    assert router.handle(proj, ctx, rec(b"e1", 0), False) == Outcome.RETRIED
    assert router.handle(proj, ctx, rec(b"e2", 1), False) == Outcome.PARKED
    assert router.handle(proj, ctx, rec(b"x1", 2, key=b"other"), False) == Outcome.APPLIED
    assert proj.applied == [b"x1"]  # other keys keep flowing
    first, second = ctx.sends
    assert first[0] == "order-events.retry" and dict(first[3])["x-eventide-attempt"] == b"1"
    assert dict(second[3])["x-eventide-seq"] == b"1"

    r1, r2 = as_retry_record(first, 0), as_retry_record(second, 1)
    assert router.handle(proj, ctx, r1, True) == Outcome.WAIT  # backoff not over
    clock[0] += 100
    proj.failing.clear()
    assert router.handle(proj, ctx, r1, True) == Outcome.APPLIED
    assert router.handle(proj, ctx, r1, True) == Outcome.STALE  # a copy after a crash
    assert router.handle(proj, ctx, r2, True) == Outcome.APPLIED
    assert proj.applied == [b"x1", b"e1", b"e2"]
    assert ctx.tx.get(STATE_PREFIX + b"k") is None  # the key flows freely again


def test_an_out_of_turn_record_goes_to_the_back_of_the_queue(setup):
    router, ctx, proj, clock = setup
    proj.failing.add(b"e1")
    router.handle(proj, ctx, rec(b"e1", 0), False)
    router.handle(proj, ctx, rec(b"e2", 1), False)
    first, second = ctx.sends
    clock[0] += 1000
    # e1's retry fails again: re-sent behind e2, which must not overtake it
    assert router.handle(proj, ctx, as_retry_record(first, 0), True) == Outcome.RETRIED
    assert router.handle(proj, ctx, as_retry_record(second, 1), True) == Outcome.PARKED
    assert proj.applied == []


def test_exhausted_attempts_dead_letter_the_record_with_its_story(setup):
    router, ctx, proj, clock = setup
    proj.failing.add(b"e1")
    router.handle(proj, ctx, rec(b"e1", 7, headers=[("event-id", b"id-1")]), False)
    sent = ctx.sends[-1]
    for offset in (0, 1):
        clock[0] += 10_000
        outcome = router.handle(proj, ctx, as_retry_record(sent, offset), True)
        sent = ctx.sends[-1]
    assert outcome == Outcome.DEAD
    topic, key, value, headers, _ = sent
    h = dict(headers)
    assert (topic, key, value) == ("order-events.dlq", b"k", b"e1")
    assert h["event-id"] == b"id-1"
    assert h["dlq-origin-offset"] == b"7" and h["dlq-attempts"] == b"2"
    assert h["dlq-error-class"] == b"ConnectionError"
    assert not any(k.startswith("x-eventide") for k in h)


def test_invalid_input_is_dead_lettered_once_and_never_retried(setup):
    router, ctx, proj, _ = setup
    router.begin_batch()
    assert router.handle(proj, ctx, rec(b"garbage", 3), False) == Outcome.INVALID
    assert router.handle(proj, ctx, rec(b"garbage", 3), False) == Outcome.INVALID
    assert [s[0] for s in ctx.sends] == ["order-events.dlq"]
    assert dict(ctx.sends[0][3])["dlq-attempts"] == b"0"

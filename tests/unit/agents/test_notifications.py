"""The notification projection with a real PartitionStore and a recording sink."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from agents.notifications import NotificationsProjection
from schemas import ValidationError, new_event
from schemas.codecs import EventCodec
from streams.projection import BatchContext
from streams.settings import Settings
from streams.sinks import CircuitBreaker, CircuitOpenError, SinkError
from tables.readmodels.notifications import (
    LOG_KEY,
    Notification,
    dedupe_key,
    expire,
    notification_for,
)
from tables.store import PartitionStore
from tables.transaction import Transaction

DAY_MS = 86_400_000


class RecordingSink:
    """Accepts everything except what it is told to fail."""

    name = "memory"

    def __init__(self, concurrency: int = 4) -> None:
        self.concurrency = concurrency
        self.delivered: list[str] = []
        self.calls = 0
        self.fail_ids: set[str] = set()
        self.down = False
        self.fail_flush = False

    async def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.down or notification.event_id in self.fail_ids:
            raise SinkError(f"refused {notification.event_id}")
        self.delivered.append(notification.event_id)

    async def flush(self) -> None:
        if self.fail_flush:
            raise SinkError("disk full")

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def user_created(user_id: str = "c-1"):
    return new_event(
        "user.created", {"userId": user_id, "email": f"{user_id}@example.com", "name": "Ada"}
    )


def placed(order_id: str = "o-1"):
    data = {
        "orderId": order_id,
        "customerId": "c-1",
        "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}],
        "totalAmount": 16.0,
        "currency": "EUR",
    }
    return new_event("order.placed", data)


def shipped(order_id: str = "o-1"):
    return new_event(
        "order.shipped", {"orderId": order_id, "trackingNumber": "T1", "carrier": "DHL"}
    )


def unchecked_json(event):
    """The JSON form of ``event`` without the codec's checks: some events are invalid on purpose."""
    return orjson.dumps(event.to_dict())


def record(event, with_headers: bool = True):
    key = (event.data.get("userId") or event.data["orderId"]).encode()
    topic = "user-events" if event.name.startswith("user.") else "order-events"
    headers = EventCodec().headers(event) if with_headers else ()
    return SimpleNamespace(
        topic=topic, partition=0, offset=0, key=key, value=unchecked_json(event), headers=headers
    )


@pytest.fixture
def store(tmp_path):
    s = PartitionStore(tmp_path / "notifications-0")
    yield s
    s.close()


def make(sink=None, clock=None, **env):
    settings = Settings.from_env(env)
    sink = sink or RecordingSink()
    clock = clock or Clock()
    breaker = CircuitBreaker(
        settings.notify_breaker_failures, settings.notify_breaker_cooldown, clock=clock
    )
    return NotificationsProjection(settings, EventCodec(), sink, breaker, clock=clock), sink


async def run_batch(projection, store, records, parent=None):
    """Apply records, run after_batch and commit, as the engine does."""
    ctx = BatchContext(Transaction(store, parent))
    for r in records:
        projection.apply(ctx, r)
    failed = await projection.after_batch(ctx)
    ctx.tx.commit()
    return failed


# -- the pure part -----------------------------------------------------------------


def test_each_notifying_event_has_its_kind_and_recipient():
    u, p, s = user_created(), placed(), shipped()
    assert (notification_for(u).kind, notification_for(u).recipient) == ("welcome", "c-1")
    confirmation = notification_for(p)
    assert (confirmation.kind, confirmation.recipient) == ("order_confirmation", "c-1")
    assert confirmation.data == {
        "orderId": "o-1",
        "customerId": "c-1",
        "totalAmount": 16.0,
        "currency": "EUR",
        "itemCount": 2,
    }
    notice = notification_for(s)
    assert (notice.kind, notice.entity_id, notice.data["trackingNumber"]) == (
        "shipping_notice",
        "o-1",
        "T1",
    )
    assert notification_for(new_event("order.cancelled", {"orderId": "o-1"})) is None


def test_a_notifying_event_without_its_id_is_invalid():
    event = new_event("order.shipped", {"trackingNumber": "T1"})
    with pytest.raises(ValidationError, match=r"data\.orderId"):
        notification_for(event)


# -- the projection ----------------------------------------------------------------


async def test_sends_welcome_confirmation_and_shipping_notice_once(store):
    projection, sink = make()
    events = [user_created(), placed(), shipped()]
    assert await run_batch(projection, store, [record(e) for e in events]) == []
    assert sink.delivered == [e.id for e in events]
    for e in events:
        assert store.get(dedupe_key(notification_for(e))) == 1_800_000_000_000


async def test_duplicates_in_one_batch_and_redeliveries_later_are_not_sent_again(store):
    projection, sink = make()
    u, p = user_created(), placed()
    await run_batch(projection, store, [record(u), record(u), record(p)])
    await run_batch(projection, store, [record(p), record(u)])  # redelivered after a crash
    assert sink.delivered == [u.id, p.id]
    assert projection.duplicates == 3


async def test_the_next_batch_sees_the_pending_batch_sent_ids(store):
    projection, sink = make()
    u = user_created()
    first = BatchContext(Transaction(store))
    projection.apply(first, record(u))
    await projection.after_batch(first)  # in flight: not yet written to RocksDB
    second = BatchContext(Transaction(store, first.tx))
    projection.apply(second, record(u))
    assert await projection.after_batch(second) == []
    assert sink.delivered == [u.id]


async def test_events_that_notify_nobody_are_skipped_without_decoding(store):
    projection, sink = make()
    paid = record(new_event("order.payment_confirmed", {"orderId": "o-1"}))
    paid.value = b"not even json"  # never decoded: the event-name header says enough
    assert await run_batch(projection, store, [paid]) == []
    assert sink.calls == 0


async def test_records_without_headers_are_decoded(store):
    projection, sink = make()
    u = user_created()
    await run_batch(projection, store, [record(u, with_headers=False)])
    assert sink.delivered == [u.id]


async def test_a_failed_send_is_returned_not_recorded_and_sent_on_retry(store):
    projection, sink = make()
    u1, u2 = user_created("c-1"), user_created("c-2")
    sink.fail_ids = {u1.id}
    r1, r2 = record(u1), record(u2)
    failed = await run_batch(projection, store, [r1, r2])
    assert [(r, type(e)) for r, e in failed] == [(r1, SinkError)]
    assert store.get(dedupe_key(notification_for(u1))) is None
    assert sink.delivered == [u2.id]
    sink.fail_ids = set()
    assert await run_batch(projection, store, [r1]) == []  # the retry topic brings it back
    assert sink.delivered == [u2.id, u1.id]


async def test_after_a_failure_the_same_entity_later_notifications_wait_behind_it(store):
    projection, sink = make()
    p, s, other = placed("o-1"), shipped("o-1"), placed("o-2")
    sink.fail_ids = {p.id}
    rp, rs, ro = record(p), record(s), record(other)
    failed = await run_batch(projection, store, [rp, rs, ro])
    assert [r for r, _ in failed] == [rp, rs]  # in offset order, for the retry topic
    assert "held behind event" in str(failed[1][1])
    assert sink.delivered == [other.id]


async def test_open_breaker_refuses_without_calling_the_sink_then_probes(store):
    clock = Clock()
    sink = RecordingSink(concurrency=1)
    projection, _ = make(
        sink, clock, EVENTIDE_NOTIFY_BREAKER_FAILURES="2", EVENTIDE_NOTIFY_BREAKER_COOLDOWN="30"
    )
    sink.down = True
    users = [user_created(f"c-{i}") for i in range(5)]
    failed = await run_batch(projection, store, [record(u) for u in users])
    assert len(failed) == 5
    assert sink.calls == 2  # then the breaker opened
    assert [type(e) for _, e in failed].count(CircuitOpenError) == 3
    assert "circuit open" in str(failed[-1][1])

    sink.down = False
    clock.now += 10
    assert len(await run_batch(projection, store, [record(u) for u in users])) == 5
    assert sink.calls == 2  # still cooling
    clock.now += 20
    assert await run_batch(projection, store, [record(u) for u in users[:1]]) == []
    assert projection.breaker.state == "closed"  # the probe went through
    assert await run_batch(projection, store, [record(u) for u in users]) == []
    assert sink.delivered == [u.id for u in users]


async def test_a_failed_flush_fails_the_whole_batch(store):
    projection, sink = make()
    sink.fail_flush = True
    u = user_created()
    failed = await run_batch(projection, store, [record(u)])
    assert [str(e) for _, e in failed] == ["disk full"]
    assert store.get(dedupe_key(notification_for(u))) is None


async def test_sent_ids_expire_after_the_retention_window_bounded_per_batch(store):
    clock = Clock()
    projection, sink = make(clock=clock, EVENTIDE_NOTIFY_RETENTION=str(7 * 86400))
    projection.expire_per_batch = 3
    old = [user_created(f"c-{i}") for i in range(5)]
    await run_batch(projection, store, [record(u) for u in old])
    clock.now += 86400
    newer = user_created("c-new")
    await run_batch(projection, store, [record(newer)])
    keys = [dedupe_key(notification_for(u)) for u in old]

    clock.now += 6 * 86400 + 1  # the old ones are past the window; the newer one is not
    await run_batch(projection, store, [])
    assert sum(store.get(k) is not None for k in keys) == 2  # at most 3 forgotten per batch
    await run_batch(projection, store, [])
    assert all(store.get(k) is None for k in keys)
    assert store.get(dedupe_key(notification_for(newer))) is not None
    assert store.get(LOG_KEY) == {"head": 2, "tail": 1}

    await run_batch(projection, store, [record(old[0])])  # past retention: sent again
    assert sink.delivered.count(old[0].id) == 2


def test_expire_without_a_log_does_nothing(store):
    tx = Transaction(store)
    assert expire(tx, now_ms=10 * DAY_MS, retention_ms=DAY_MS, limit=10) == 0
    assert tx.updates == {}

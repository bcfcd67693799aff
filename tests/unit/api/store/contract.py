"""What every outbox store promises (api/store/base.py), as one abstract test suite.

:class:`OutboxStoreContract` is subclassed once per backend (test_sqlite.py,
test_postgres.py), which says how to reach a fresh database and how to build
a store on it; every test here then runs against each backend. Tests of what
only one backend does (SQLite's lease, PostgreSQL's shards and notifications)
live in its subclass. Nothing here needs a broker: the relay's side is driven
through :meth:`OutboxStore.claim` directly.

Several stores opened on one database stand for several processes (two APIs,
an API and a relay); each keeps its own connections, caches and groups.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest

from api.aggregate import CommandMeta, Decision, cancel_order, confirm_payment, place_order
from api.exceptions import (
    ConcurrencyError,
    ConflictError,
    IdempotencyKeyReusedError,
    NotFoundError,
    StoreError,
)
from api.service import CommandService
from api.store import (
    Claim,
    CommandOutcome,
    Decider,
    IdempotencyKey,
    OutboxRow,
    OutboxStore,
    fingerprint,
    store_for,
)
from schemas.codecs import default_codec
from schemas.envelope import Envelope, new_event
from schemas.exceptions import ValidationError
from streams.settings import Settings

TOPIC = "contract.order-events"
ITEM = {"sku": "sku-mug", "quantity": 2, "unitPrice": 4.0}

OpenStore = Callable[..., Awaitable[OutboxStore]]
"""Opens another store on the test's database (options as the store's constructor's)."""


def order(order_id: str) -> dict[str, Any]:
    return {"orderId": order_id, "customerId": "c-1", "items": [ITEM], "currency": "EUR"}


def place(order_id: str) -> Decider:
    return lambda history: place_order(history, order(order_id), CommandMeta())


def pay(order_id: str, payment: str = "p-1") -> Decider:
    data = {"orderId": order_id, "paymentId": payment}
    return lambda history: confirm_payment(history, data, CommandMeta())


def cancel(order_id: str) -> Decider:
    data = {"orderId": order_id, "reason": "changed my mind"}
    return lambda history: cancel_order(history, data, CommandMeta())


def key(name: str, request: str = "") -> IdempotencyKey:
    """An Idempotency-Key with the request it came with (``request`` tells requests apart)."""
    return IdempotencyKey(name, fingerprint("POST", "/orders", request.encode()))


class Recorder:
    """A decider that records every history it was given, then decides with ``decide``."""

    def __init__(self, decide: Decider) -> None:
        self.decide = decide
        self.histories: list[list[str]] = []
        """Ids of the events of each history, oldest first."""

    def __call__(self, history: list[Envelope]) -> Decision:
        self.histories.append([e.id for e in history])
        return self.decide(history)


def envelope_of(row: OutboxRow) -> Envelope:
    """The event an outbox row carries (its value is the encoded envelope)."""
    return default_codec().decode(row.value)


async def execute(
    store: OutboxStore,
    order_id: str,
    decide: Decider,
    idempotency: IdempotencyKey | None = None,
    expect_new: bool = False,
) -> CommandOutcome:
    return await store.execute(f"order:{order_id}", TOPIC, decide, idempotency, expect_new)


async def names(store: OutboxStore, order_id: str) -> list[str]:
    return [e.name for e in await store.load_stream(f"order:{order_id}")]


async def drain(
    store: OutboxStore, relay_id: str = "relay-1", limit: int = 1000
) -> list[OutboxRow]:
    """Claim and mark published until nothing is pending; every row handed out, in order."""
    handed: list[OutboxRow] = []
    for _ in range(100):
        if not await store.pending_count():
            return handed
        async with store.claim(relay_id, limit) as claim:
            claim.mark_published([r.id for r in claim.rows])
        handed.extend(claim.rows)
    raise AssertionError(f"still {await store.pending_count()} rows pending after 100 claims")


class OutboxStoreContract(ABC):
    """The tests every :class:`~api.store.OutboxStore` must pass.

    A subclass gives the ``database_url`` fixture (a fresh, empty database per
    test, as EVENTIDE_DATABASE_URL spells it), :meth:`create_store`,
    :meth:`unreachable_url`, :meth:`check_second_claim` and :attr:`optimistic`.
    """

    optimistic: ClassVar[bool]
    """True: the store may decide against a history it read before appending
    (its cache, or none for a new entity) and then refuses the append with
    :class:`ConcurrencyError`. False: it reads and appends under one write
    lock, so a decider always sees the latest history and that error never
    comes."""

    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError("a subclass gives a fresh database per test")

    @abstractmethod
    def create_store(self, database_url: str, **options: Any) -> OutboxStore:
        """A store on that database, not opened yet."""

    @abstractmethod
    def unreachable_url(self, database_url: str) -> str:
        """A database URL of the same kind that cannot be opened."""

    @pytest.fixture
    async def open_store(self, database_url: str) -> AsyncIterator[OpenStore]:
        opened: list[OutboxStore] = []

        async def open_store(**options: Any) -> OutboxStore:
            store = self.create_store(database_url, **options)
            await store.open()
            opened.append(store)
            return store

        yield open_store
        for store in reversed(opened):
            await store.close()

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> OutboxStore:
        return await open_store()

    # -- opening ----------------------------------------------------------------

    async def test_a_new_store_is_empty(self, store: OutboxStore) -> None:
        assert await store.load_stream("order:none") == []
        assert await store.pending_count() == 0
        assert await store.outbox_counts() == {"pending": 0, "published": 0}
        async with store.claim("relay-1", 100) as claim:
            assert claim.rows == []
        assert await store.cleanup(time.time() + 60) == 0

    async def test_store_for_builds_this_store_from_the_database_url(
        self, database_url: str, store: OutboxStore
    ) -> None:
        built = store_for(Settings.from_env({"EVENTIDE_DATABASE_URL": database_url}))
        assert type(built) is type(store)
        assert built.kind == store.kind

    async def test_opening_again_keeps_everything(self, open_store: OpenStore) -> None:
        first = await open_store()
        placed = await execute(first, "o-1", place("o-1"), key("k-1"))
        # A second process creates the schema again while the first is open.
        second = await open_store()
        assert await names(second, "o-1") == ["order.placed"]
        await first.close()
        await second.close()

        reopened = await open_store()
        assert await names(reopened, "o-1") == ["order.placed"]
        assert await reopened.outbox_counts() == {"pending": 1, "published": 0}
        again = await execute(reopened, "o-1", place("o-1"), key("k-1"))
        assert again == CommandOutcome(201, placed.body, replayed=True)

    async def test_a_store_not_open_raises_store_error(self, database_url: str) -> None:
        store = self.create_store(database_url)
        with pytest.raises(StoreError, match="not open"):
            await execute(store, "o-1", place("o-1"))
        with pytest.raises(StoreError, match="not open"):
            await store.load_stream("order:o-1")
        with pytest.raises(StoreError, match="not open"):
            await store.outbox_counts()
        with pytest.raises(StoreError, match="not open"):
            async with store.claim("relay-1", 10):
                pass  # pragma: no cover
        await store.close()  # closing a store never opened is harmless

    async def test_an_unreachable_database_raises_a_retriable_store_error(
        self, database_url: str
    ) -> None:
        store = self.create_store(self.unreachable_url(database_url))
        with pytest.raises(StoreError) as info:
            await store.open()
        assert info.value.retriable
        await store.close()

    async def test_listen_returns_at_once(self, store: OutboxStore) -> None:
        await asyncio.wait_for(store.listen(lambda: None), 10)

    # -- commands -----------------------------------------------------------------

    async def test_a_command_appends_its_event_with_an_outbox_row(self, store: OutboxStore) -> None:
        before = time.time()
        outcome = await execute(store, "o-1", place("o-1"))
        after = time.time()

        assert outcome.status == 201 and not outcome.replayed
        assert outcome.body["orderId"] == "o-1" and outcome.body["status"] == "pending"
        [event] = await store.load_stream("order:o-1")
        assert event.name == "order.placed" and event.data["orderId"] == "o-1"
        assert outcome.body["eventId"] == event.id
        assert outcome.body["correlationId"] == event.correlation_id == event.id
        assert await store.load_stream("order:other") == []

        assert await store.pending_count() == 1
        async with store.claim("relay-1", 10) as claim:
            [row] = claim.rows
        assert (row.event_id, row.topic, row.key) == (event.id, TOPIC, "o-1")
        assert envelope_of(row) == event
        assert before - 1 <= row.created_at <= after + 1

    async def test_the_decider_is_given_the_entitys_history_oldest_first(
        self, store: OutboxStore
    ) -> None:
        ids = []
        for decide in (place("o-1"), pay("o-1"), cancel("o-1")):
            recorder = Recorder(decide)
            await execute(store, "o-1", recorder)
            assert recorder.histories == [ids]
            ids = [e.id for e in await store.load_stream("order:o-1")]
        assert await names(store, "o-1") == ["order.placed", "order.payment_confirmed",
                                             "order.cancelled"]  # fmt: skip
        events = await store.load_stream("order:o-1")
        assert [e.causation_id for e in events] == [None, events[0].id, events[1].id]

    async def test_a_refused_command_writes_nothing(self, store: OutboxStore) -> None:
        await execute(store, "o-1", place("o-1"))
        with pytest.raises(ConflictError, match="already exists"):
            await execute(store, "o-1", place("o-1"))
        with pytest.raises(NotFoundError, match="'o-2' not found"):
            await execute(store, "o-2", pay("o-2"))
        assert await names(store, "o-1") == ["order.placed"]
        assert await store.load_stream("order:o-2") == []
        assert await store.outbox_counts() == {"pending": 1, "published": 0}

    async def test_the_events_of_one_decision_are_appended_together_in_order(
        self, store: OutboxStore
    ) -> None:
        def placed_and_paid(history: list[Envelope]) -> Decision:
            first = place_order(history, order("o-1"), CommandMeta()).events[0]
            paid = confirm_payment([first], {"orderId": "o-1", "paymentId": "p"}, CommandMeta())
            return Decision([first, *paid.events], {"orderId": "o-1"})

        outcome = await execute(store, "o-1", placed_and_paid)
        events = await store.load_stream("order:o-1")
        assert [e.name for e in events] == ["order.placed", "order.payment_confirmed"]
        assert outcome.body["eventId"] == events[-1].id
        async with store.claim("relay-1", 10) as claim:
            assert [r.event_id for r in claim.rows] == [e.id for e in events]

    async def test_a_decision_that_cannot_be_written_leaves_nothing(
        self, store: OutboxStore
    ) -> None:
        """Writing the second event fails once the first one's rows are in the
        transaction: neither is kept, no outbox row, no idempotency answer."""
        await execute(store, "kept", place("kept"))

        def half_written(history: list[Envelope]) -> Decision:
            good = place_order(history, order("doomed"), CommandMeta()).events[0]
            # No orderId: no key to publish it by, and the codec refuses it.
            return Decision([good, new_event("order.cancelled", {"reason": "x"})])

        # Which check speaks first differs by backend (SQLite encodes first).
        with pytest.raises((ValidationError, ValueError), match=r"data\.orderId"):
            await execute(store, "doomed", half_written, key("k-doomed"))
        assert await store.load_stream("order:doomed") == []
        assert await store.outbox_counts() == {"pending": 1, "published": 0}
        # The key was not kept either: the corrected request runs.
        outcome = await execute(store, "doomed", place("doomed"), key("k-doomed"))
        assert not outcome.replayed
        assert await names(store, "doomed") == ["order.placed"]

    async def test_many_commands_at_once_each_commit_or_fail_alone(
        self, store: OutboxStore
    ) -> None:
        """Commands arriving together (a store may commit them as a group) are
        answered one by one: a refusal among them takes none of the others down."""
        commands = [
            execute(store, f"o-{n}", pay(f"o-{n}") if n % 5 == 0 else place(f"o-{n}"))
            for n in range(40)
        ]
        results = await asyncio.gather(*commands, return_exceptions=True)
        for n, result in enumerate(results):
            if n % 5 == 0:
                assert isinstance(result, NotFoundError), (n, result)
                assert await store.load_stream(f"order:o-{n}") == []
            else:
                assert isinstance(result, CommandOutcome), (n, result)
                assert await names(store, f"o-{n}") == ["order.placed"]
        assert await store.outbox_counts() == {"pending": 32, "published": 0}

    # -- idempotency ---------------------------------------------------------------

    async def test_a_key_seen_before_replays_the_first_answer_and_writes_nothing(
        self, store: OutboxStore
    ) -> None:
        first = await execute(store, "o-1", place("o-1"), key("k-1"))
        recorder = Recorder(place("o-1"))
        again = await execute(store, "o-1", recorder, key("k-1"))
        assert recorder.histories == []  # not decided again
        assert again == CommandOutcome(201, first.body, replayed=True)
        assert await names(store, "o-1") == ["order.placed"]
        assert await store.outbox_counts() == {"pending": 1, "published": 0}
        # The key belongs to its request, not to the entity.
        paid = await execute(store, "o-1", pay("o-1"), key("k-2"))
        assert not paid.replayed and paid.body["eventId"] != first.body["eventId"]

    async def test_a_key_reused_with_another_request_is_refused_naming_it(
        self, store: OutboxStore
    ) -> None:
        await execute(store, "o-1", place("o-1"), key("k-1", "first"))
        with pytest.raises(IdempotencyKeyReusedError, match="'k-1' was first used"):
            await execute(store, "o-2", place("o-2"), key("k-1", "second"))
        assert await store.load_stream("order:o-2") == []
        assert await store.outbox_counts() == {"pending": 1, "published": 0}

    async def test_concurrent_requests_with_one_key_act_once(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        results = await asyncio.gather(
            *(execute(first if n % 2 else second, "o-1", place("o-1"), key("k-1"))
              for n in range(8))
        )  # fmt: skip
        assert [r.replayed for r in results].count(False) == 1
        assert len({r.body["eventId"] for r in results}) == 1
        assert await names(first, "o-1") == ["order.placed"]
        assert await first.outbox_counts() == {"pending": 1, "published": 0}

    # -- concurrency ---------------------------------------------------------------

    async def test_a_command_decided_on_a_stale_history_never_appends(
        self, open_store: OpenStore
    ) -> None:
        """Process a placed the order and remembers it as pending; process b pays
        it. Process a's payment is then refused, never appended after b's."""
        a, b = await open_store(), await open_store()
        await execute(a, "o-1", place("o-1"))
        await execute(b, "o-1", pay("o-1", "p-b"))
        recorder = Recorder(pay("o-1", "p-a"))
        if self.optimistic:
            with pytest.raises(ConcurrencyError, match="order:o-1"):
                await execute(a, "o-1", recorder)
            assert len(recorder.histories[0]) == 1  # decided on what a had cached
        # Decided against the latest history (at once, or on the caller's retry):
        with pytest.raises(ConflictError, match="already confirmed"):
            await execute(a, "o-1", recorder)
        assert len(recorder.histories[-1]) == 2
        assert await names(a, "o-1") == ["order.placed", "order.payment_confirmed"]
        assert [e.data["paymentId"] for e in (await a.load_stream("order:o-1"))[1:]] == ["p-b"]
        assert await a.outbox_counts() == {"pending": 2, "published": 0}

    async def test_creating_an_entity_that_exists_never_appends_a_second_first_event(
        self, open_store: OpenStore
    ) -> None:
        """``expect_new``: a store may decide without reading, but appending
        event number 1 of an existing stream fails with ConcurrencyError."""
        a, b = await open_store(), await open_store()
        await execute(a, "o-1", place("o-1"))
        recorder = Recorder(place("o-1"))
        if self.optimistic:
            with pytest.raises(ConcurrencyError):
                await execute(b, "o-1", recorder, expect_new=True)
            assert recorder.histories == [[]]
        else:
            with pytest.raises(ConflictError, match="already exists"):
                await execute(b, "o-1", recorder, expect_new=True)
            assert [len(h) for h in recorder.histories] == [1]
        assert await names(b, "o-1") == ["order.placed"]
        assert await b.outbox_counts() == {"pending": 1, "published": 0}

    async def test_racing_commands_and_stale_caches_append_once(
        self, open_store: OpenStore
    ) -> None:
        """Through the command service, which retries on ConcurrencyError: from
        one process and from two, one command wins, the others are decided again
        against the new state."""
        settings = Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "contract."})
        a, b = await open_store(), await open_store()
        first, second = CommandService(settings, a), CommandService(settings, b)

        async def place_via(service: CommandService, oid: str) -> CommandOutcome:
            data = order(oid)
            return await service.handle("order", oid, place_order, data, CommandMeta())

        async def pay_via(service: CommandService, oid: str, payment: str) -> CommandOutcome:
            data = {"orderId": oid, "paymentId": payment}
            return await service.handle("order", oid, confirm_payment, data, CommandMeta())

        # The first process remembers the order as pending; the second pays it.
        await place_via(first, "stale")
        await pay_via(second, "stale", "p-2")
        with pytest.raises(ConflictError, match="already confirmed"):
            await pay_via(first, "stale", "p-1")
        # A second place of the same id, decided without reading (it creates):
        with pytest.raises(ConflictError, match="already exists"):
            await place_via(second, "stale")

        # Ten payments at once from both processes: exactly one is accepted.
        await place_via(first, "race")
        results = await asyncio.gather(
            *(pay_via(first if n % 2 else second, "race", f"p-{n}") for n in range(10)),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(accepted) == 1, results
        assert all(isinstance(r, ConflictError) for r in refused), refused

        for stream in ("order:stale", "order:race"):
            assert [e.name for e in await a.load_stream(stream)] == [
                "order.placed",
                "order.payment_confirmed",
            ]
        assert await a.outbox_counts() == {"pending": 4, "published": 0}

    # -- claims -----------------------------------------------------------------

    async def test_a_claim_hands_out_pending_rows_oldest_first_up_to_its_limit(
        self, store: OutboxStore
    ) -> None:
        for decide in (place("o-1"), pay("o-1"), cancel("o-1")):
            await execute(store, "o-1", decide)
        events = await store.load_stream("order:o-1")
        async with store.claim("relay-1", 2) as claim:
            assert [r.event_id for r in claim.rows] == [e.id for e in events[:2]]
        for n in range(2, 12):
            await execute(store, f"o-{n}", place(f"o-{n}"))
        async with store.claim("relay-1", 5) as claim:
            ids = [r.id for r in claim.rows]
            assert 0 < len(ids) <= 5 and ids == sorted(ids)

    async def test_marks_are_recorded_when_the_claim_closes_and_the_rest_is_claimed_again(
        self, store: OutboxStore
    ) -> None:
        for decide in (place("o-1"), pay("o-1"), cancel("o-1")):
            await execute(store, "o-1", decide)
        await execute(store, "o-2", place("o-2"))
        async with store.claim("relay-1", 100) as claim:
            rows = claim.rows
            assert len(rows) == 4
            claim.mark_published([r.id for r in rows[:2]])
            claim.mark_published([rows[3].id])
            assert await store.outbox_counts() == {"pending": 4, "published": 0}
        assert await store.outbox_counts() == {"pending": 1, "published": 3}
        assert await store.pending_count() == 1
        async with store.claim("relay-1", 100) as claim:
            assert claim.rows == [rows[2]]  # not marked: handed out again, unchanged
        assert await store.pending_count() == 1

    async def test_an_entitys_rows_are_claimed_in_the_order_they_were_appended(
        self, store: OutboxStore
    ) -> None:
        orders = [f"o-{n}" for n in range(6)]
        for step in (place, pay, cancel):
            await asyncio.gather(*(execute(store, oid, step(oid)) for oid in orders))
        handed = await drain(store, limit=4)
        assert len(handed) == len({r.id for r in handed}) == 18
        for oid in orders:
            appended = [e.id for e in await store.load_stream(f"order:{oid}")]
            assert [r.event_id for r in handed if r.key == oid] == appended, oid
        assert await store.outbox_counts() == {"pending": 0, "published": 18}

    async def test_concurrent_claims_never_share_an_entity(self, open_store: OpenStore) -> None:
        first, second = await open_store(), await open_store()
        for n in range(60):
            await execute(first, f"claim-{n}", place(f"claim-{n}"))
        async with first.claim("relay-a", 1000) as a:
            async with second.claim("relay-b", 1000) as b:
                b.mark_published([r.id for r in b.rows])
            a.mark_published([r.id for r in a.rows])
        keys_a, keys_b = {r.key for r in a.rows}, {r.key for r in b.rows}
        assert keys_a, "the first relay got nothing"
        assert not keys_a & keys_b, "two relays were given rows of the same order"
        counts = await first.outbox_counts()
        assert counts["published"] == len(a.rows) + len(b.rows)  # what each marked, once
        self.check_second_claim(a, b)

    @abstractmethod
    def check_second_claim(self, first: Claim, second: Claim) -> None:
        """What a store gives a second relay while a first one holds a claim."""

    async def test_a_released_relay_lets_another_take_over_at_once(
        self, open_store: OpenStore
    ) -> None:
        first, second = await open_store(), await open_store()
        await execute(first, "o-1", place("o-1"))
        async with first.claim("relay-a", 100) as claim:
            assert len(claim.rows) == 1  # published nothing: it stopped
        await first.release("relay-a")
        async with second.claim("relay-b", 100) as claim:
            assert [r.key for r in claim.rows] == ["o-1"]
            claim.mark_published([r.id for r in claim.rows])
        assert await first.outbox_counts() == {"pending": 0, "published": 1}

    # -- retention ---------------------------------------------------------------

    async def test_cleanup_deletes_published_rows_and_answers_older_than_the_cutoff(
        self, store: OutboxStore
    ) -> None:
        started = time.time() - 1
        for n in range(3):
            await execute(store, f"o-{n}", place(f"o-{n}"), key(f"k-{n}"))
        async with store.claim("relay-1", 100) as claim:
            claim.mark_published([r.id for r in claim.rows if r.key != "o-2"])

        # Nothing is old enough yet: published rows and answers are kept.
        assert await store.cleanup(started) == 0
        assert await store.outbox_counts() == {"pending": 1, "published": 2}
        assert (await execute(store, "o-0", place("o-0"), key("k-0"))).replayed

        # Past the retention period: published rows go, the pending one stays
        # however old it is, and the answers go (the key acts as a new request).
        assert await store.cleanup(time.time() + 60) == 2
        assert await store.outbox_counts() == {"pending": 1, "published": 0}
        assert await store.pending_count() == 1
        with pytest.raises(ConflictError, match="already exists"):
            await execute(store, "o-0", place("o-0"), key("k-0"))
        # Events are the entity's history: retention never touches them.
        for n in range(3):
            assert await names(store, f"o-{n}") == ["order.placed"]
        async with store.claim("relay-1", 100) as claim:
            assert [r.key for r in claim.rows] == ["o-2"]

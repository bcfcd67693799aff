"""The customers read model: facts applied as versioned upserts of running statistics."""

import itertools
import random
from types import SimpleNamespace

import orjson
import pytest

from agents.customers import CustomersProjection
from schemas.codecs import CONTENT_TYPE_AVRO, EventCodec
from schemas.envelope import new_event
from streams.exceptions import RecordKeyError
from streams.keys import PersonalFields
from streams.projection import BatchContext
from streams.settings import Settings
from tables.readmodels.customers import customer_view, order_key
from tables.store import PartitionStore
from tables.transaction import Transaction
from tests.fixtures.keys import memory_keys


def fact(order, version, placed=None, paid=None, customer="c-1"):
    return {
        "orderId": order,
        "customerId": customer,
        "version": version,
        "placedAt": placed,
        "paidAmount": paid,
    }


@pytest.fixture
def projection():
    return CustomersProjection(Settings.from_env({}), EventCodec())


@pytest.fixture
def store(tmp_path):
    s = PartitionStore(tmp_path / "customers-0")
    yield s
    s.close()


def apply_all(projection, store, facts, commit_every=3):
    """Feed facts as records, committing a batch every few records."""
    tx = Transaction(store)
    for n, f in enumerate(facts, 1):
        record = SimpleNamespace(
            topic=projection.facts_topic, value=orjson.dumps(f), key=f["customerId"].encode()
        )
        projection.apply(BatchContext(tx), record)
        if n % commit_every == 0:
            tx.commit()
            tx = Transaction(store)
    tx.commit()


def served(projection, store, customer="c-1"):
    return projection.view(store.get(customer.encode()))


LIFECYCLE = [
    fact("o-1", 1, placed="2026-11-01T10:00:00Z"),
    fact("o-1", 2, placed="2026-11-01T10:00:00Z", paid=20.5),
    fact("o-2", 1, placed="2026-11-03T09:00:00Z"),
    fact("o-3", 1, placed="2026-11-02T08:00:00Z"),
    fact("o-3", 2, placed="2026-11-02T08:00:00Z", paid=4.25),
]
EXPECTED = {
    "customerId": "c-1",
    "email": None,
    "name": None,
    "createdAt": None,
    "orderCount": 3,
    "totalSpent": 24.75,
    "lastOrderAt": "2026-11-03T09:00:00Z",
    "forgotten": False,
}


def test_statistics_follow_the_facts(projection, store):
    apply_all(projection, store, LIFECYCLE)
    assert served(projection, store) == EXPECTED
    assert store.get(order_key("o-1")) == [2, "2026-11-01T10:00:00Z", 20.5]


def test_duplicates_replays_and_stale_facts_change_nothing(projection, store):
    rng = random.Random(3)
    for _ in range(20):
        shuffled = LIFECYCLE * 2  # every fact twice
        rng.shuffle(shuffled)
        s = PartitionStore(store.path.parent / f"shuffled-{rng.random()}")
        apply_all(projection, s, shuffled, commit_every=rng.randint(1, 4))
        assert served(projection, s) == EXPECTED, shuffled
        s.close()


def test_a_later_fact_replaces_the_order_contribution(projection, store):
    apply_all(projection, store, [fact("o-1", 2, placed="2026-11-01T10:00:00Z", paid=10.0)])
    apply_all(projection, store, [fact("o-1", 3, placed="2026-11-01T10:00:00Z", paid=12.0)])
    view = served(projection, store)
    assert (view["orderCount"], view["totalSpent"]) == (1, 12.0)


def test_a_document_of_the_earlier_format_is_upgraded(projection, store):
    legacy = {
        "customerId": "c-1",
        "email": "a@example.com",
        "name": "A",
        "createdAt": "2026-10-01T00:00:00Z",
        "orders": {"o-1": [2, "2026-11-01T10:00:00Z", 20.5], "o-2": [1, None, None]},
    }
    store.write({b"c-1": orjson.dumps(legacy)}, {})
    assert served(projection, store)["orderCount"] == 1  # served as before
    apply_all(
        projection,
        store,
        [
            fact("o-1", 2, placed="2026-11-01T10:00:00Z", paid=20.5),  # a replay
            fact("o-3", 1, placed="2026-11-05T10:00:00Z"),
        ],
    )
    stored = store.get(b"c-1")
    assert "orders" not in stored
    assert served(projection, store) == {
        **{k: legacy[k] for k in ("customerId", "email", "name", "createdAt")},
        "orderCount": 2,
        "totalSpent": 20.5,
        "lastOrderAt": "2026-11-05T10:00:00Z",
        "forgotten": False,
    }


def test_cost_of_a_fact_does_not_grow_with_the_customer_orders(projection, store):
    facts = [fact(f"o-{n}", 1, placed=f"2026-11-01T10:{n % 60:02d}:00Z") for n in range(500)]
    apply_all(projection, store, facts, commit_every=50)
    stored_size = len(orjson.dumps(store.get(b"c-1")))
    assert stored_size < 300  # one document of counters, not one entry per order
    assert customer_view(store.get(b"c-1"))["orderCount"] == 500
    assert len(list(itertools.islice(store.items(), 10))) == 1  # entries are not served


async def test_personal_fields_are_stored_encrypted_and_shredded_by_forget(projection, store):
    keys = memory_keys()
    projection.keys = keys.ring
    codec = EventCodec()
    key = await keys.key_for("c-1")
    data = {"userId": "c-1", "email": "ann@example.com", "name": "Ann Lee"}
    encrypted = PersonalFields(codec.registry).encrypt(key, "user.created", data)
    created = new_event("user.created", encrypted, source="user-service")
    value = codec.encode(created, CONTENT_TYPE_AVRO)
    headers = codec.headers(created, CONTENT_TYPE_AVRO)
    record = SimpleNamespace(topic=projection.users_topic, value=value, key=b"c-1", headers=headers)

    def apply_user():
        tx = Transaction(store)
        projection.apply(BatchContext(tx), record)
        tx.commit()

    apply_user()
    apply_all(projection, store, LIFECYCLE[:3])
    view = served(projection, store)
    assert (view["email"], view["name"], view["forgotten"]) == ("ann@example.com", "Ann Lee", False)
    stored = b"".join(k + v for k, v in store.raw_items())
    assert b"ann@example.com" not in stored and b"Ann Lee" not in stored

    await keys.forget("c-1")
    apply_all(projection, store, LIFECYCLE[3:])  # facts after forget are still applied
    apply_user()  # and so is a replay of the event (a rebuild)
    assert served(projection, store) == {
        **EXPECTED,
        "createdAt": created.timestamp,
        "forgotten": True,
    }


@pytest.mark.parametrize("key", [None, b"c-2"])
def test_a_fact_or_user_event_not_keyed_by_its_customer_is_refused(projection, store, key):
    tx = Transaction(store)
    facts = SimpleNamespace(
        topic=projection.facts_topic, value=orjson.dumps(fact("o-1", 1, placed="t")), key=key
    )
    with pytest.raises(RecordKeyError, match='expected the customer id "c-1"'):
        projection.apply(BatchContext(tx), facts)
    user = new_event("user.created", {"userId": "c-1", "email": "a@b.c", "name": "A"})
    created = SimpleNamespace(
        topic=projection.users_topic, value=EventCodec().encode_json(user), key=key, headers=()
    )
    with pytest.raises(RecordKeyError, match='expected the user id "c-1"'):
        projection.apply(BatchContext(tx), created)
    assert tx.updates == {}

"""The RocksDB partition store, on real RocksDB files in tmp_path."""

from __future__ import annotations

import contextlib
import dataclasses

import orjson
import pytest
from rocksdict import DbClosedError, Options, Rdict

from tables.changelog import CHANGELOG, OFFSETS_KEY
from tables.store import PartitionStore, RocksDBOptions
from tables.transaction import Transaction

RETRY = b"\x00retry:"


def doc(value: object) -> bytes:
    return orjson.dumps(value)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "orders" / "p0"


@pytest.fixture
def store(path):
    store = PartitionStore(path)
    yield store
    with contextlib.suppress(DbClosedError):  # closed already by a test that reopened it
        store.close()


def reopen(store: PartitionStore) -> PartitionStore:
    store.close()
    return PartitionStore(store.path)


def test_a_new_store_is_empty_and_creates_its_directory(path):
    store = PartitionStore(path)
    assert path.is_dir()
    assert store.get(b"o-1") is None and b"o-1" not in store
    assert store.offsets() == {}
    assert store.offset("order-events") == -1
    assert list(store.items()) == [] and list(store.raw_items()) == []
    store.close()


def test_values_and_offsets_written_together_survive_reopening(store):
    store.write({b"o-1": doc({"status": "pending"}), b"o-2": doc([1, 2])}, {"order-events": 41})
    assert store.get(b"o-1") == {"status": "pending"}
    assert store.offset("order-events") == 41

    store = reopen(store)
    assert store.get(b"o-1") == {"status": "pending"} and store.get(b"o-2") == [1, 2]
    assert b"o-1" in store
    assert store.offsets() == {"order-events": 41}
    store.close()


def test_values_and_offsets_are_one_write_batch(store):
    """A write that fails part-way leaves both the values and the offsets as they were."""
    store.write({b"o-1": doc(1)}, {"order-events": 1})
    with pytest.raises(ValueError, match="bytes"):
        store.write({b"o-1": doc(2), b"o-2": "not bytes"}, {"order-events": 2})  # type: ignore[dict-item]
    assert store.get(b"o-1") == 1 and store.get(b"o-2") is None
    assert store.offset("order-events") == 1
    store = reopen(store)
    assert (store.get(b"o-1"), store.offset("order-events")) == (1, 1)
    store.close()


def test_offsets_are_merged_per_source(store):
    store.write({}, {"order-events": 5, "user-events": 7})
    store.write({}, {"order-events": 9, CHANGELOG: 3})
    assert store.offsets() == {"order-events": 9, "user-events": 7, CHANGELOG: 3}
    returned = store.offsets()
    returned["order-events"] = 0  # a copy: the store's offsets stay
    assert store.offset("order-events") == 9
    store = reopen(store)
    assert store.offsets() == {"order-events": 9, "user-events": 7, CHANGELOG: 3}
    store.close()


def test_none_deletes_a_key_for_good(store):
    store.write({b"o-1": doc(1), b"o-2": doc(2)}, {"t": 1})
    store.write({b"o-1": None, b"o-3": None}, {"t": 2})  # deleting a missing key is harmless
    assert store.get(b"o-1") is None and b"o-1" not in store
    assert store.get(b"o-2") == 2
    store = reopen(store)
    assert b"o-1" not in store
    assert [k for k, _ in store.items()] == [b"o-2"]
    assert store.offset("t") == 2
    store.close()


def test_items_are_in_key_order_without_metadata(store):
    store.write(
        {
            b"o-2": doc({"n": 2}),
            RETRY + b"o-1": doc({"next": 1}),
            b"o-10": doc({"n": 10}),
            b"c-1": doc({"n": 0}),
        },
        {"t": 1},
    )
    assert list(store.items()) == [
        (b"c-1", {"n": 0}),
        (b"o-10", {"n": 10}),  # bytewise order: "1" sorts before "2"
        (b"o-2", {"n": 2}),
    ]


def test_raw_items_give_stored_bytes_by_prefix_with_metadata_but_not_offsets(store):
    store.write(
        {
            b"o-2": doc(2),
            b"o-1": doc(1),
            b"p-1": doc(3),
            RETRY + b"o-1": doc({"next": 1}),
            b"\x00zzz": doc("meta"),
        },
        {"t": 1},
    )
    assert list(store.raw_items()) == [
        (RETRY + b"o-1", doc({"next": 1})),
        (b"\x00zzz", doc("meta")),
        (b"o-1", doc(1)),
        (b"o-2", doc(2)),
        (b"p-1", doc(3)),
    ]
    assert OFFSETS_KEY < b"\x00zzz"  # the offsets record sits among them, left out
    assert list(store.raw_items(b"o-")) == [(b"o-1", doc(1)), (b"o-2", doc(2))]
    assert list(store.raw_items(b"\x00")) == [
        (RETRY + b"o-1", doc({"next": 1})),
        (b"\x00zzz", doc("meta")),
    ]
    assert list(store.raw_items(b"q")) == []


def test_the_offsets_record_is_stored_under_its_metadata_key(store, path):
    store.write({b"o-1": doc(1)}, {"order-events": 12, CHANGELOG: 4})
    store.close()
    raw = Rdict(str(path), Options(raw_mode=True))
    try:
        assert orjson.loads(raw[OFFSETS_KEY]) == {"order-events": 12, CHANGELOG: 4}
        assert raw[b"o-1"] == doc(1)
    finally:
        raw.close()


def test_has_prefix_looks_once_and_writes_keep_it_true(store):
    assert not store.has_prefix(RETRY)
    assert not store.has_prefix(b"\x00other:")
    store.write({RETRY + b"o-1": doc({"next": 1})}, {})
    assert store.has_prefix(RETRY)
    assert not store.has_prefix(b"\x00other:")
    assert not store.has_prefix(b"\x00retry:o-2")  # a longer prefix is its own question
    # After a delete the answer may stay true (a lookup then just misses)...
    store.write({RETRY + b"o-1": None}, {})
    assert store.has_prefix(RETRY)
    # ...and is looked up afresh when the store is opened again.
    store = reopen(store)
    assert not store.has_prefix(RETRY)
    store.close()


def test_has_prefix_does_not_mistake_a_neighbour_for_a_match(store):
    store.write({b"\x00retrx:o-1": doc(1), b"\x00retrz:o-1": doc(2)}, {})
    assert not store.has_prefix(RETRY)


def test_prefix_presence_follows_writes_and_survives_reopening(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    assert not store.has_prefix(RETRY)
    tx = Transaction(store)
    tx.set(b"o-1", {"status": "pending"})
    assert not tx.may_have(RETRY)  # only entity keys written: lookups may be skipped
    tx.set(RETRY + b"o-1", {"next": 1, "head": 0, "count": 1})
    assert tx.may_have(RETRY)
    child = Transaction(store, tx)  # the next batch, before its parent is written
    assert child.may_have(RETRY)
    assert child.get(RETRY + b"o-1") == {"next": 1, "head": 0, "count": 1}
    tx.commit()
    assert store.has_prefix(RETRY)
    store.close()

    reopened = PartitionStore(tmp_path / "p0")
    assert reopened.has_prefix(RETRY)
    assert not reopened.has_prefix(b"\x00other:")
    assert reopened.get(RETRY + b"o-1") == {"next": 1, "head": 0, "count": 1}
    reopened.close()


def test_changelog_style_writes_mark_the_prefix_present(tmp_path):
    store = PartitionStore(tmp_path / "p1")
    assert not store.has_prefix(RETRY)  # remembered as absent...
    store.write({RETRY + b"o-9": b'{"next":1,"head":0,"count":1}'}, {"t": 3})
    assert store.has_prefix(RETRY)  # ...until a write brings one in
    assert store.offset("t") == 3
    store.close()


def test_destroy_deletes_the_files(path):
    store = PartitionStore(path)
    store.write({b"o-1": doc(1)}, {"t": 1})
    store.destroy()
    assert not path.exists()
    assert path.parent.is_dir()  # the table's other partitions are left alone
    again = PartitionStore(path)
    assert again.get(b"o-1") is None and again.offsets() == {}
    again.close()


def test_rocksdb_options_are_applied_and_fit_a_store(tmp_path):
    options = RocksDBOptions(write_buffer_size=64 * 1024, max_write_buffer_number=2, use_fsync=True)
    assert isinstance(options.to_options(), Options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.use_fsync = False  # type: ignore[misc]
    assert RocksDBOptions() == RocksDBOptions(32 * 1024 * 1024, 3, False)

    store = PartitionStore(tmp_path / "small", options)
    big = doc("x" * 1000)
    for batch in range(20):  # ~800 KB through 64 KB memtables: several flushes
        store.write({f"k-{batch}-{n:02d}".encode(): big for n in range(40)}, {"t": batch})
    store.close()
    store = PartitionStore(tmp_path / "small", options)
    assert sum(1 for _ in store.items()) == 800
    assert store.offset("t") == 19
    store.close()

"""Transactions on a real RocksDB partition store: reads, statuses, changelog, flush."""

from __future__ import annotations

import orjson
import pytest

from tables.changelog import CHANGELOG, OFFSETS_KEY, SEQ
from tables.exceptions import StateError, TransactionStateError
from tables.store import PartitionStore
from tables.transaction import Transaction, TransactionStatus

RETRY = b"\x00retry:"


@pytest.fixture
def store(tmp_path):
    store = PartitionStore(tmp_path / "orders" / "p3")
    store.write({b"o-1": orjson.dumps({"v": "stored"}), b"o-2": orjson.dumps({"v": "stored"})}, {})
    yield store
    store.close()


def test_reads_see_the_transactions_own_writes_then_the_store(store):
    tx = Transaction(store)
    assert tx.get(b"o-1") == {"v": "stored"}
    tx.set(b"o-1", {"v": "mine"})
    tx.set(b"o-2", None)
    tx.set(b"o-3", {"v": "new"})
    assert tx.get(b"o-1") == {"v": "mine"}
    assert tx.get(b"o-2") is None  # deleted in the transaction, though stored
    assert tx.get(b"o-3") == {"v": "new"}
    assert tx.get(b"o-4") is None
    assert store.get(b"o-1") == {"v": "stored"}  # nothing reaches the store before flush


def test_a_transaction_reads_through_its_parent_before_the_store(store):
    parent = Transaction(store)
    parent.set(b"o-1", {"v": "parent"})
    parent.set(b"o-2", None)
    parent.prepare()  # the previous batch: prepared, changelog in flight, not flushed
    child = Transaction(store, parent)
    assert child.get(b"o-1") == {"v": "parent"}
    assert child.get(b"o-2") is None  # the parent's delete hides the stored value
    child.set(b"o-1", {"v": "child"})
    assert child.get(b"o-1") == {"v": "child"}
    assert parent.get(b"o-1") == {"v": "parent"}  # the child never writes into its parent

    parent.flush(0)
    assert parent.parent is None
    assert child.get(b"o-2") is None  # now from the store, where it is deleted
    assert store.get(b"o-1") == {"v": "parent"}


def test_may_have_follows_the_metadata_written_by_the_transaction_and_its_parents(store):
    parent = Transaction(store)
    child = Transaction(store, parent)
    assert not child.may_have(RETRY)
    parent.set(RETRY + b"o-1", {"next": 1})
    assert child.may_have(RETRY) and parent.may_have(RETRY)
    assert not child.may_have(b"\x00other:")
    parent.set(b"\x00flag", True)  # a metadata key without ':' is its own prefix
    assert parent.meta_prefixes == {RETRY, b"\x00flag"}


def test_a_transaction_goes_started_prepared_complete(store):
    tx = Transaction(store)
    assert tx.status is TransactionStatus.STARTED
    tx.set(b"o-1", {"v": 1})
    tx.set(b"o-1", {"v": 2})  # a key written twice is kept once, last value
    tx.set(b"o-2", None)
    tx.applied("order-events", 10)
    tx.applied("order-events", 12)
    tx.applied("user-events", 3)

    encoded = tx.prepare()
    assert tx.status is TransactionStatus.PREPARED
    assert encoded == {b"o-1": b'{"v":2}', b"o-2": None}

    tx.flush(changelog_offset=77)
    assert tx.status is TransactionStatus.COMPLETE
    assert store.get(b"o-1") == {"v": 2} and b"o-2" not in store
    assert store.offsets() == {"order-events": 12, "user-events": 3, SEQ: 1, CHANGELOG: 77}


def test_flush_without_a_changelog_leaves_the_changelog_offset_alone(store):
    first = Transaction(store)
    first.applied("order-events", 1)
    first.prepare()
    first.flush(5)
    second = Transaction(store)
    second.set(b"o-9", [1])
    second.applied("order-events", 2)
    second.commit()  # prepare and flush, no changelog (a rebuild's shadow store)
    assert second.status is TransactionStatus.COMPLETE
    assert store.get(b"o-9") == [1]
    assert store.offsets() == {"order-events": 2, SEQ: 2, CHANGELOG: 5}


def test_values_encoded_by_the_caller_are_stored_as_given(store):
    tx = Transaction(store)
    tx.set(b"o-1", {"b": 1, "a": 2}, encoded=b'{"b": 1, "a": 2}')
    tx.set(b"o-2", {"v": 1}, encoded=b'{"v":1}')
    tx.set(b"o-2", {"v": 2})  # rewritten without: encoded again from the value
    assert tx.prepare() == {b"o-1": b'{"b": 1, "a": 2}', b"o-2": b'{"v":2}'}


def test_the_changelog_has_the_data_then_the_offsets_never_the_local_position(store):
    store.write({}, {CHANGELOG: 40})  # the store's own changelog position
    tx = Transaction(store)
    tx.set(b"o-1", {"v": 1})
    tx.set(b"o-2", None)
    tx.set(RETRY + b"o-1", {"next": 1})
    tx.applied("order-events", 12)
    tx.prepare()
    records = list(tx.changelog())
    assert records == [
        (b"o-1", b'{"v":1}'),
        (b"o-2", None),  # a tombstone
        (RETRY + b"o-1", b'{"next":1}'),
        (OFFSETS_KEY, b'{"order-events":12,"__seq__":1,"__records__":3}'),
    ]
    assert list(tx.changelog()) == records  # asked again, the same records


def test_a_batch_without_changes_still_records_its_offsets(store):
    tx = Transaction(store)
    tx.applied("order-events", 3)  # every record of the batch was skipped
    tx.prepare()
    assert list(tx.changelog()) == [
        (OFFSETS_KEY, b'{"order-events":3,"__seq__":1,"__records__":0}')
    ]


def test_a_failed_transaction_leaves_nothing_in_the_store(store):
    for prepare in (False, True):
        parent = Transaction(store)
        tx = Transaction(store, parent)
        tx.set(b"o-1", {"v": "lost"})
        tx.applied("order-events", 99)
        if prepare:
            tx.prepare()
        tx.fail()
        assert tx.status is TransactionStatus.FAILED
        assert tx.parent is None
        assert store.get(b"o-1") == {"v": "stored"}
        assert store.offset("order-events") == -1
    tx.fail()  # failing again changes nothing


def expect_state_error(action, message: str) -> None:
    with pytest.raises(TransactionStateError) as info:
        action()
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, StateError) and not info.value.retriable


def test_illegal_transitions_raise_naming_the_status_and_the_store(store):
    where = str(store.path)
    started = Transaction(store)
    expect_state_error(
        started.changelog,
        f"cannot produce the changelog of a started transaction of {where}; only a prepared one",
    )
    expect_state_error(
        started.flush, f"cannot flush a started transaction of {where}; only a prepared one"
    )

    prepared = Transaction(store)
    prepared.prepare()
    expect_state_error(
        lambda: prepared.set(b"o-1", 1),
        f"cannot write to a prepared transaction of {where}; only a started one",
    )
    expect_state_error(
        lambda: prepared.applied("t", 1),
        f"cannot record offsets in a prepared transaction of {where}; only a started one",
    )
    expect_state_error(
        prepared.prepare, f"cannot prepare a prepared transaction of {where}; only a started one"
    )
    expect_state_error(prepared.commit, "cannot prepare a prepared transaction")

    complete = Transaction(store)
    complete.commit()
    expect_state_error(complete.flush, "cannot flush a complete transaction")
    expect_state_error(complete.changelog, "cannot produce the changelog of a complete")
    expect_state_error(lambda: complete.set(b"o-1", 1), "cannot write to a complete")
    expect_state_error(complete.fail, f"cannot fail a complete transaction of {where}")
    assert complete.status is TransactionStatus.COMPLETE

    failed = Transaction(store)
    failed.fail()
    expect_state_error(failed.prepare, "cannot prepare a failed transaction")
    expect_state_error(failed.flush, "cannot flush a failed transaction")
    expect_state_error(lambda: failed.set(b"o-1", 1), "cannot write to a failed transaction")
    expect_state_error(lambda: failed.applied("t", 1), "cannot record offsets in a failed")
    assert store.get(b"o-1") == {"v": "stored"}

"""The changelog record format: what a batch produces, and recovery restoring a
real RocksDB partition store from those records."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from tables.changelog import (
    CHANGELOG,
    OFFSETS_KEY,
    apply_changelog,
    batch_records,
    decode,
    offsets_record,
)
from tables.store import PartitionStore
from tables.transaction import Transaction

RETRY = b"\x00retry:"


def consumed(
    records: Iterable[tuple[bytes | None, bytes | None]], first_offset: int = 0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records as a consumer of the changelog partition gets them."""
    return [
        ConsumerRecord(
            topic="app-orders-changelog",
            partition=3,
            offset=first_offset + n,
            timestamp=0,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value or b""),
            headers=[],
        )
        for n, (key, value) in enumerate(records)
    ]


def test_the_offsets_record_leaves_the_local_changelog_position_out():
    key, value = offsets_record({"order-events": 12, CHANGELOG: 40, "user-events": 3})
    assert key == OFFSETS_KEY == b"\x00offsets"
    assert orjson.loads(value) == {"order-events": 12, "user-events": 3}
    assert offsets_record({}) == (OFFSETS_KEY, b"{}")


def test_a_batch_is_its_data_records_then_its_offsets_record():
    values = {b"o-2": b'{"v":2}', b"o-1": None, RETRY + b"o-1": b"{}"}
    records = list(batch_records(values, {"order-events": 7, CHANGELOG: 1}))
    assert records == [
        (b"o-2", b'{"v":2}'),
        (b"o-1", None),
        (RETRY + b"o-1", b"{}"),
        (OFFSETS_KEY, b'{"order-events":7}'),
    ]
    assert list(batch_records({}, {"order-events": 8})) == [(OFFSETS_KEY, b'{"order-events":8}')]


def test_decode_keeps_the_last_value_of_each_key_and_merges_offsets():
    records = consumed(
        [
            (b"o-1", b'{"v":1}'),
            (OFFSETS_KEY, b'{"order-events":5,"user-events":1}'),
            (b"o-1", b'{"v":2}'),
            (b"o-2", b'{"v":1}'),
            (b"o-2", None),
            (OFFSETS_KEY, b'{"order-events":9}'),
            (None, b"ignored"),  # a keyless record carries no state
        ],
        first_offset=100,
    )
    values, offsets = decode(records)
    assert values == {b"o-1": b'{"v":2}', b"o-2": None}
    assert offsets == {"order-events": 9, "user-events": 1, CHANGELOG: 106}
    assert decode([]) == ({}, {})


def test_applying_no_records_writes_nothing(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    apply_changelog(store, [])
    assert store.offsets() == {}
    store.close()
    store = PartitionStore(tmp_path / "p0")
    assert store.offsets() == {} and list(store.raw_items()) == []
    store.close()


def produce_batches(store: PartitionStore) -> list[tuple[bytes, bytes | None]]:
    """Three batches through transactions, flushed as the engine does once the
    changelog is acknowledged; returns every changelog record, in order."""
    produced: list[tuple[bytes, bytes | None]] = []

    def batch(changes: dict[bytes, object], offset: int) -> None:
        tx = Transaction(store)
        for key, value in changes.items():
            tx.set(key, value)
        tx.applied("order-events", offset)
        tx.prepare()
        produced.extend(tx.changelog())
        tx.flush(changelog_offset=len(produced) - 1)

    batch({b"o-1": {"status": "pending"}, b"o-2": {"status": "pending"}}, 10)
    batch({b"o-1": {"status": "confirmed"}, RETRY + b"o-3": {"next": 1}, b"o-2": None}, 14)
    batch({}, 15)  # a batch whose records were all skipped: offsets only
    return produced


def test_a_store_restored_from_the_changelog_equals_the_one_that_produced_it(tmp_path):
    live = PartitionStore(tmp_path / "live")
    produced = produce_batches(live)
    assert [k for k, _ in produced] == [
        b"o-1", b"o-2", OFFSETS_KEY,
        b"o-1", RETRY + b"o-3", b"o-2", OFFSETS_KEY,
        OFFSETS_KEY,
    ]  # fmt: skip
    assert all(b"__changelog__" not in (v or b"") for _, v in produced)

    restored = PartitionStore(tmp_path / "restored")
    apply_changelog(restored, consumed(produced))
    assert list(restored.raw_items()) == list(live.raw_items())
    assert restored.offsets() == live.offsets() == {"order-events": 15, CHANGELOG: 7}
    assert restored.get(b"o-1") == {"status": "confirmed"} and b"o-2" not in restored
    assert restored.has_prefix(RETRY)

    # Recovery resumes after the last changelog offset the store has seen,
    # also once the store is opened again.
    assert restored.offset(CHANGELOG) + 1 == len(produced)
    restored.close()
    restored = PartitionStore(tmp_path / "restored")
    assert list(restored.raw_items()) == list(live.raw_items())
    assert restored.offsets() == live.offsets()
    restored.close()
    live.close()


@pytest.mark.parametrize("split", range(1, 8))
def test_restoring_in_chunks_ends_in_the_same_state(tmp_path, split):
    """The consumer hands records over in chunks that ignore batch boundaries."""
    live = PartitionStore(tmp_path / "live")
    produced = produce_batches(live)
    records = consumed(produced)
    restored = PartitionStore(tmp_path / "restored")
    apply_changelog(restored, records[:split])
    assert restored.offset(CHANGELOG) == split - 1
    apply_changelog(restored, records[split:])
    assert list(restored.raw_items()) == list(live.raw_items())
    assert restored.offsets() == live.offsets()
    restored.close()
    live.close()

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
    RECORDS,
    SEQ,
    ChangelogReplay,
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
    assert offsets_record({"order-events": 3, SEQ: 2}, 5) == (
        OFFSETS_KEY,
        b'{"order-events":3,"__seq__":2,"__records__":5}',
    )


def test_a_batch_is_its_data_records_then_its_offsets_record():
    values = {b"o-2": b'{"v":2}', b"o-1": None, RETRY + b"o-1": b"{}"}
    records = list(batch_records(values, {"order-events": 7, CHANGELOG: 1}))
    assert records == [
        (b"o-2", b'{"v":2}'),
        (b"o-1", None),
        (RETRY + b"o-1", b"{}"),
        (OFFSETS_KEY, b'{"order-events":7,"__records__":3}'),
    ]
    assert list(batch_records({}, {"order-events": 8})) == [
        (OFFSETS_KEY, b'{"order-events":8,"__records__":0}')
    ]


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
    assert offsets == {"order-events": 9, "user-events": 1, SEQ: 0, CHANGELOG: 105}
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
    assert restored.offsets() == live.offsets() == {"order-events": 15, SEQ: 3, CHANGELOG: 7}
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
    """The consumer hands records over in chunks that ignore batch boundaries:
    a batch is restored once its offsets record has been read."""
    live = PartitionStore(tmp_path / "live")
    produced = produce_batches(live)
    records = consumed(produced)
    restored = PartitionStore(tmp_path / "restored")
    replay = ChangelogReplay(restored.offset(SEQ))
    values, offsets = replay.feed(records[:split])
    if offsets:
        restored.write(values, offsets)
    ends = [r.offset for r in records[:split] if r.key == OFFSETS_KEY]
    assert restored.offset(CHANGELOG) == (ends[-1] if ends else -1)
    assert len(replay.pending) == split - 1 - restored.offset(CHANGELOG)
    restored.write(*replay.feed(records[split:]))
    assert list(restored.raw_items()) == list(live.raw_items())
    assert restored.offsets() == live.offsets()
    assert replay.pending == [] and replay.dropped == 0
    restored.close()
    live.close()


def _offsets(seq: int, records: int, **sources: int) -> tuple[bytes, bytes]:
    return OFFSETS_KEY, orjson.dumps({**sources, SEQ: seq, RECORDS: records})


def test_a_torn_batch_at_the_end_is_held_back_not_restored(tmp_path):
    """A worker killed while producing a batch's changelog: data records and no
    offsets record. Its events are applied again, so its records must not be."""
    store = PartitionStore(tmp_path / "p")
    replay = ChangelogReplay()
    records = consumed(
        [
            (b"c-1", b'{"orderCount":1}'),
            _offsets(1, 1, **{"order-events": 4}),
            (b"c-1", b'{"orderCount":2}'),  # torn: its offsets record never came
        ]
    )
    store.write(*replay.feed(records))
    assert store.get(b"c-1") == {"orderCount": 1}
    assert store.offsets() == {"order-events": 4, SEQ: 1, CHANGELOG: 1}
    assert replay.pending == [(b"c-1", b'{"orderCount":2}')]


def test_torn_records_before_the_batch_that_redid_them_are_left_out(tmp_path):
    """The worker after the crash redoes the batch with the next number, after
    the torn records: those are the surplus before the batch's own records."""
    produced = [
        (b"c-1", b'{"orderCount":1}'),
        (b"\x00order:o-1", b"[1]"),
        _offsets(1, 2, **{"order-events": 4}),
        (b"c-1", b'{"orderCount":2}'),  # torn batch 2: the customer document ...
        (b"c-2", b'{"orderCount":9}'),  # ... and a key the redo does not write
        (b"c-1", b'{"orderCount":2}'),  # batch 2 redone, one event fewer
        (b"\x00order:o-2", b"[1]"),
        _offsets(2, 2, **{"order-events": 5}),
    ]
    for start in (0, 3):  # a fresh store, and one that has batch 1
        store = PartitionStore(tmp_path / f"from-{start}")
        replay = ChangelogReplay()
        if start:
            store.write(*replay.feed(consumed(produced[:start])))
        store.write(*replay.feed(consumed(produced[start:], first_offset=start)))
        assert store.get(b"c-2") is None
        assert store.get(b"c-1") == {"orderCount": 2}
        assert store.offsets() == {"order-events": 5, SEQ: 2, CHANGELOG: 7}
        assert replay.dropped == 2 and replay.pending == []
        store.close()


def test_batches_with_offsets_records_compacted_away_are_restored_whole(tmp_path):
    """Compaction keeps only the last offsets record: the data records before it
    are many batches' (not torn ones), and all of them are restored."""
    produced = [
        (b"c-1", b'{"orderCount":1}'),  # batch 1, its offsets record compacted away
        (b"c-2", b'{"orderCount":1}'),  # batch 2, likewise
        (b"c-3", b'{"orderCount":1}'),
        _offsets(3, 1, **{"order-events": 9}),
    ]
    store = PartitionStore(tmp_path / "p")
    replay = ChangelogReplay()
    store.write(*replay.feed(consumed(produced)))
    assert [store.get(k) for k in (b"c-1", b"c-2", b"c-3")] == [{"orderCount": 1}] * 3
    assert replay.dropped == 0
    assert store.offset(SEQ) == 3


def test_batches_are_numbered_one_after_the_other_through_parents(tmp_path):
    store = PartitionStore(tmp_path / "p")
    first = Transaction(store)
    first.applied("order-events", 1)
    first.prepare()
    second = Transaction(store, first)  # in flight while the first awaits its acks
    second.applied("order-events", 2)
    second.prepare()
    assert (first.offsets[SEQ], second.offsets[SEQ]) == (1, 2)
    first.flush(0)
    second.flush(1)
    third = Transaction(store)
    third.applied("order-events", 3)
    third.prepare()
    assert third.offsets[SEQ] == 3 and store.offset(SEQ) == 2

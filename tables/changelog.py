"""The changelog record format of a table partition, in one place.

A table's changelog topic is compacted and has the partitions of the table's
source topics: partition *p* of the changelog holds partition *p* of the table.
It carries two kinds of records:

- a **data** record per changed key: the key's stored bytes (a JSON document),
  or a tombstone (``None``) when the key was deleted;
- the **offsets** record, under :data:`OFFSETS_KEY`, after a batch's data
  records: JSON ``{source topic: last applied offset}``, plus the batch's
  number in its partition (:data:`SEQ`: 1, 2, ... one more than the batch
  before it) and how many data records it ends (:data:`RECORDS`). Once it is
  in the changelog, the batch before it is done: recovery restores the data
  and the applied offsets together, and the engine skips what they cover.

A batch's records reach the changelog in order but not at once (a producer
may send them in several requests), so a worker killed while producing them
can leave some of its data records without their offsets record: a **torn**
batch. Its source offsets were never recorded, so its events are applied
again after the restart, and its records must never be restored, or those
events count twice. :class:`ChangelogReplay` restores complete batches only:

- data records after the last offsets record are held back (at the end of a
  recovery they are the torn batch, and are dropped);
- when the next offsets record follows the last one restored (its
  :data:`SEQ` is one more) but more data records precede it than it ends
  (:data:`RECORDS`), the first ones are a torn batch's and are dropped. Torn
  records always come first: the worker that redid the batch wrote after
  them. When some offsets records are missing in between (compaction keeps
  only the last one), every record is restored: a torn record that survives
  compaction is followed by the record that redid it.

The store keeps one more offset under the same key locally,
:data:`CHANGELOG`: the changelog offset it has seen, where recovery resumes.
It is never written to the changelog itself.

Used by the engine (each batch), recovery and standbys (replay), and rebuild
(the switch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import orjson

META_PREFIX = b"\x00"
"""Keys starting with it hold metadata; no entity id starts with it."""
OFFSETS_KEY = b"\x00offsets"
"""Meta key: JSON {source topic: last applied offset, "__changelog__": offset}."""
CHANGELOG = "__changelog__"
"""The offsets entry recording the last changelog offset a store has seen."""
SEQ = "__seq__"
"""The offsets entry numbering a store's batches (1, 2, ...), in the changelog too."""
RECORDS = "__records__"
"""In an offsets record only: how many data records precede it in its batch."""


class ChangelogRecord(Protocol):
    """What recovery needs of a consumed changelog record."""

    key: Any
    value: Any
    offset: int


class WritableStore(Protocol):
    """A store that writes encoded values and offsets together (tables/store.py)."""

    def write(self, values: dict[bytes, bytes | None], offsets: dict[str, int]) -> None: ...


def offsets_record(offsets: Mapping[str, int], records: int | None = None) -> tuple[bytes, bytes]:
    """The (key, value) of the offsets record for ``offsets`` (the local
    changelog position left out), ending a batch of ``records`` data records."""
    body = {k: v for k, v in offsets.items() if k != CHANGELOG}
    if records is not None:
        body[RECORDS] = records
    return OFFSETS_KEY, orjson.dumps(body)


def batch_records(
    values: Mapping[bytes, bytes | None], offsets: Mapping[str, int]
) -> Iterator[tuple[bytes, bytes | None]]:
    """The changelog records of one batch: its data records, then its offsets record."""
    yield from values.items()
    yield offsets_record(offsets, len(values))


def next_seq(offsets: Mapping[str, int]) -> int:
    """The :data:`SEQ` of the batch after the one that left ``offsets``."""
    return max(offsets.get(SEQ, 0), 0) + 1


class ChangelogReplay:
    """Complete batches out of one changelog partition's records, read in
    offset order from just after the last offsets record a store has (see the
    module's docstring on torn batches).

    ``seq`` is the :data:`SEQ` of the store's last batch (0 for none).
    """

    def __init__(self, seq: int = 0) -> None:
        self.seq = max(seq, 0)
        self.pending: list[tuple[bytes, bytes | None]] = []
        """(key, value) of the data records read since the last offsets record."""
        self.dropped = 0
        """Data records of torn batches left out so far (the tail not counted)."""

    def feed(
        self, records: Iterable[ChangelogRecord]
    ) -> tuple[dict[bytes, bytes | None], dict[str, int]]:
        """The values and offsets of the batches ``records`` complete (last
        wins; :data:`CHANGELOG` set to the last offsets record's offset); data
        records after the last offsets record are kept for the next call."""
        values: dict[bytes, bytes | None] = {}
        offsets: dict[str, int] = {}
        pending = self.pending
        for record in records:
            key = record.key
            if key != OFFSETS_KEY:
                if key is not None:  # a keyless record carries no state
                    pending.append((key, record.value))
                continue
            body = orjson.loads(record.value)
            count = body.pop(RECORDS, None)
            seq = body.get(SEQ)
            if count is not None and seq == self.seq + 1 and len(pending) > count:
                torn = len(pending) - count
                self.dropped += torn
                del pending[:torn]
            values.update(pending)
            pending.clear()
            body[SEQ] = self.seq = seq if isinstance(seq, int) else 0
            offsets.update(body)
            offsets[CHANGELOG] = record.offset
        return values, offsets

    def restore(self, store: WritableStore, records: Iterable[ChangelogRecord]) -> None:
        """Write the batches ``records`` complete to ``store`` in one WriteBatch."""
        values, offsets = self.feed(records)
        if offsets:
            store.write(values, offsets)

    @property
    def left_out(self) -> int:
        """Data records not restored: torn batches' and those still pending."""
        return self.dropped + len(self.pending)


def decode(records: Iterable[ChangelogRecord]) -> tuple[dict[bytes, bytes | None], dict[str, int]]:
    """Values and offsets of the complete batches in ``records``, read from the
    start of a partition or just after an offsets record (:class:`ChangelogReplay`)."""
    return ChangelogReplay().feed(records)


def apply_changelog(store: WritableStore, records: Iterable[ChangelogRecord]) -> None:
    """Write the complete batches of ``records`` (data and offsets) to a store
    in one WriteBatch."""
    values, offsets = decode(records)
    if offsets:
        store.write(values, offsets)

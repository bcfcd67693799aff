"""The changelog record format of a table partition, in one place.

A table's changelog topic is compacted and has the partitions of the table's
source topics: partition *p* of the changelog holds partition *p* of the table.
It carries two kinds of records:

- a **data** record per changed key: the key's stored bytes (a JSON document),
  or a tombstone (``None``) when the key was deleted;
- the **offsets** record, under :data:`OFFSETS_KEY`, after a batch's data
  records: JSON ``{source topic: last applied offset}``. Once it is in the
  changelog, the batch before it is done: recovery restores the data and the
  applied offsets together, and the engine skips what they cover.

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


class ChangelogRecord(Protocol):
    """What recovery needs of a consumed changelog record."""

    key: Any
    value: Any
    offset: int


class WritableStore(Protocol):
    """A store that writes encoded values and offsets together (tables/store.py)."""

    def write(self, values: dict[bytes, bytes | None], offsets: dict[str, int]) -> None: ...


def offsets_record(offsets: Mapping[str, int]) -> tuple[bytes, bytes]:
    """The (key, value) of the offsets record for ``offsets`` (the local
    changelog position left out)."""
    return OFFSETS_KEY, orjson.dumps({k: v for k, v in offsets.items() if k != CHANGELOG})


def batch_records(
    values: Mapping[bytes, bytes | None], offsets: Mapping[str, int]
) -> Iterator[tuple[bytes, bytes | None]]:
    """The changelog records of one batch: its data records, then its offsets record."""
    yield from values.items()
    yield offsets_record(offsets)


def decode(records: Iterable[ChangelogRecord]) -> tuple[dict[bytes, bytes | None], dict[str, int]]:
    """Values and offsets carried by consecutive changelog records (last wins),
    with :data:`CHANGELOG` set to the last record's offset."""
    values: dict[bytes, bytes | None] = {}
    offsets: dict[str, int] = {}
    last = -1
    for record in records:
        if record.key == OFFSETS_KEY:
            offsets.update(orjson.loads(record.value))
        elif record.key is not None:
            values[record.key] = record.value
        last = record.offset
    if last >= 0:
        offsets[CHANGELOG] = last
    return values, offsets


def apply_changelog(store: WritableStore, records: Iterable[ChangelogRecord]) -> None:
    """Write changelog records (data and offsets) to a store in one WriteBatch."""
    values, offsets = decode(records)
    if offsets:
        store.write(values, offsets)

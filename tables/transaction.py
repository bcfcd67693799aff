"""A batch's changes to one partition store, with an explicit status.

A transaction moves ``STARTED → PREPARED → COMPLETE``, or to ``FAILED``:

- **started**: a projection reads (:meth:`Transaction.get`) and writes
  (:meth:`Transaction.set`); each key written any number of times is kept once;
  :meth:`Transaction.applied` records the source offsets the batch covers;
- **prepared** (:meth:`Transaction.prepare`): the updates are encoded once and
  frozen; :meth:`Transaction.changelog` gives the records to produce (data, then
  the offsets record, :mod:`tables.changelog`);
- **complete** (:meth:`Transaction.flush`): once the broker has acknowledged
  the changelog, the updates, the source offsets and the changelog offset are
  written to RocksDB in one ``WriteBatch``;
- **failed** (:meth:`Transaction.fail`, from started or prepared): abandoned;
  nothing of it reaches the store.

A transaction may read through a *parent*: the previous batch's transaction,
not yet flushed, which may have a parent of its own (the engine keeps several
batches in flight); a flushed transaction drops its parent, the store has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any

import orjson

from .changelog import CHANGELOG, META_PREFIX, SEQ, batch_records, next_seq
from .exceptions import TransactionStateError
from .store import PartitionStore


class TransactionStatus(Enum):
    """Where a transaction is in its life."""

    STARTED = "started"
    PREPARED = "prepared"
    COMPLETE = "complete"
    FAILED = "failed"


class Transaction:
    """The changes of one batch to one partition store.

    Reads see earlier writes of the same transaction. Each key written any
    number of times is stored once and produces one changelog record.
    """

    def __init__(self, store: PartitionStore, parent: Transaction | None = None) -> None:
        self.store = store
        self.parent = parent
        """An earlier transaction not yet written to the store, read before it."""
        self.status = TransactionStatus.STARTED
        self.updates: dict[bytes, Any] = {}
        self.offsets: dict[str, int] = {}
        self._raw: dict[bytes, bytes] = {}
        self._encoded: dict[bytes, bytes | None] | None = None
        self.meta_prefixes: set[bytes] = set()
        """Prefixes (up to the first ``:``) of the metadata keys this transaction wrote."""

    def _expect(self, status: TransactionStatus, action: str) -> None:
        if self.status is not status:
            raise TransactionStateError(
                f"cannot {action} a {self.status.value} transaction of {self.store.path}; "
                f"only a {status.value} one"
            )

    # -- started ---------------------------------------------------------------

    def get(self, key: bytes) -> Any | None:
        """The value as of this transaction."""
        if key in self.updates:
            return self.updates[key]
        parent = self.parent
        while parent is not None:  # earlier batches in flight, newest first
            updates = parent.updates
            if key in updates:
                return updates[key]
            parent = parent.parent
        return self.store.get(key)

    def may_have(self, prefix: bytes) -> bool:
        """False only if no key starting with ``prefix`` can exist as of this
        transaction: :meth:`get` of any such key would miss. ``prefix`` is a
        metadata prefix ending with ``:``, such as ``b"\\x00retry:"``."""
        tx: Transaction | None = self
        while tx is not None:
            if prefix in tx.meta_prefixes:
                return True
            tx = tx.parent
        return self.store.has_prefix(prefix)

    def set(self, key: bytes, value: Any, encoded: bytes | None = None) -> None:
        """Write a JSON-serialisable value (None deletes the key).

        ``encoded``, when given, must be ``orjson.dumps(value)``; it saves
        encoding the value a second time.
        """
        if self.status is not TransactionStatus.STARTED:
            self._expect(TransactionStatus.STARTED, "write to")
        self.updates[key] = value
        if key[:1] == META_PREFIX:
            self.meta_prefixes.add(key[: key.find(b":") + 1] or key)
        if encoded is None:
            self._raw.pop(key, None)
        else:
            self._raw[key] = encoded

    def applied(self, source: str, offset: int) -> None:
        """Record that ``source`` has been applied up to ``offset``."""
        self._expect(TransactionStatus.STARTED, "record offsets in")
        self.offsets[source] = offset

    # -- prepared --------------------------------------------------------------

    def prepare(self) -> dict[bytes, bytes | None]:
        """Encode the updates once and freeze them, numbered one after the batch
        before (:data:`~tables.changelog.SEQ`); return them as stored bytes
        (None for deletes)."""
        self._expect(TransactionStatus.STARTED, "prepare")
        self.offsets[SEQ] = next_seq(self._last_offsets())
        raw = self._raw
        self._encoded = {
            k: (None if v is None else raw.get(k) or orjson.dumps(v))
            for k, v in self.updates.items()
        }
        self.status = TransactionStatus.PREPARED
        return self._encoded

    def _last_offsets(self) -> dict[str, int]:
        """The offsets of the newest earlier batch numbered: a prepared parent's,
        or the store's."""
        parent = self.parent
        while parent is not None:
            if SEQ in parent.offsets:
                return parent.offsets
            parent = parent.parent
        return self.store.offsets()

    def changelog(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The changelog records of the prepared transaction: data, then offsets."""
        self._expect(TransactionStatus.PREPARED, "produce the changelog of")
        assert self._encoded is not None
        return batch_records(self._encoded, self.offsets)

    def flush(self, changelog_offset: int | None = None) -> None:
        """Write the prepared updates and offsets (and the changelog offset that
        covers them, when the changelog was produced) in one WriteBatch."""
        self._expect(TransactionStatus.PREPARED, "flush")
        assert self._encoded is not None
        offsets = self.offsets
        if changelog_offset is not None:
            offsets = {**offsets, CHANGELOG: changelog_offset}
        self.store.write(self._encoded, offsets)
        self.status = TransactionStatus.COMPLETE
        self.parent = None

    def commit(self) -> None:
        """Prepare and flush at once, with no changelog (a store of its own,
        such as a rebuild's shadow)."""
        self.prepare()
        self.flush()

    def fail(self) -> None:
        """Abandon the transaction: nothing of it will reach the store.

        Allowed until it is complete (failing a failed one changes nothing);
        a complete transaction is in the store already and cannot fail."""
        if self.status is TransactionStatus.COMPLETE:
            raise TransactionStateError(
                f"cannot fail a complete transaction of {self.store.path}; "
                "its changes are in the store already"
            )
        self.status = TransactionStatus.FAILED
        self.parent = None

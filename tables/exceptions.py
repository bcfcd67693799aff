"""Errors of the state layer."""

from __future__ import annotations

from schemas.exceptions import EventideError


class StateError(EventideError):
    """Base class of the state layer's errors."""


class TransactionStateError(StateError):
    """A transaction was used in a status that does not allow it (a bug, not bad input)."""


class StoreError(StateError):
    """A table partition's RocksDB files could not be opened or read; the message
    names the folder and RocksDB's reason."""

    retriable = True


class StoreDamagedError(StoreError):
    """The files are damaged (a missing or truncated ``.sst``, a bad checksum, a
    broken manifest): the folder is to be moved aside and the partition restored
    from its changelog."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock (a second worker on the same data
    directory): wait for it, never move the folder aside."""

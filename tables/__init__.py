"""Read-model state: pure read-model functions (``tables.readmodels``), the RocksDB
partition store, its transactions and the changelog format."""

from .changelog import CHANGELOG, OFFSETS_KEY, apply_changelog
from .exceptions import (
    StateError,
    StoreDamagedError,
    StoreError,
    StoreLockedError,
    TransactionStateError,
)
from .store import PartitionStore, RocksDBOptions
from .transaction import Transaction, TransactionStatus

__all__ = [
    "CHANGELOG",
    "OFFSETS_KEY",
    "PartitionStore",
    "RocksDBOptions",
    "StateError",
    "StoreDamagedError",
    "StoreError",
    "StoreLockedError",
    "Transaction",
    "TransactionStateError",
    "TransactionStatus",
    "apply_changelog",
]

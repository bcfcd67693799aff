"""The command API, its transactional outbox and the outbox relay (own processes).

The web app and the relay are imported from their modules (``api.app``,
``api.relay``): importing this package loads no web framework or Kafka client.
"""

from .aggregate import Decision, rebuild_order
from .exceptions import (
    ApiError,
    ConcurrencyError,
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    NotFoundError,
    StoreError,
)
from .store import OutboxStore, PostgresStore, SqliteStore, store_for

__all__ = [
    "ApiError",
    "ConcurrencyError",
    "ConflictError",
    "Decision",
    "IdempotencyKeyReusedError",
    "InvalidCommandError",
    "NotFoundError",
    "OutboxStore",
    "PostgresStore",
    "SqliteStore",
    "StoreError",
    "rebuild_order",
    "store_for",
]

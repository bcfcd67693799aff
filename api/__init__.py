"""The command API, its transactional outbox and the outbox relay (own processes)."""

from .aggregate import Decision, rebuild_order
from .app import create_api, run_api
from .exceptions import (
    ApiError,
    ConcurrencyError,
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    NotFoundError,
    StoreError,
)
from .relay import OutboxRelay, run_relay
from .store import OutboxStore, PostgresStore, SqliteStore, store_for

__all__ = [
    "ApiError",
    "ConcurrencyError",
    "ConflictError",
    "Decision",
    "IdempotencyKeyReusedError",
    "InvalidCommandError",
    "NotFoundError",
    "OutboxRelay",
    "OutboxStore",
    "PostgresStore",
    "SqliteStore",
    "StoreError",
    "create_api",
    "rebuild_order",
    "run_api",
    "run_relay",
    "store_for",
]

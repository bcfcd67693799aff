"""Outbox stores: SQLite by default, PostgreSQL when EVENTIDE_DATABASE_URL says so."""

from __future__ import annotations

from pathlib import Path

from schemas.codecs import EventCodec
from streams.settings import Settings

from .base import (
    SHARDS,
    Claim,
    CommandOutcome,
    Decider,
    IdempotencyKey,
    OutboxRow,
    OutboxStore,
    fingerprint,
)
from .postgres import PostgresStore
from .sqlite import SqliteStore

__all__ = [
    "SHARDS",
    "Claim",
    "CommandOutcome",
    "Decider",
    "IdempotencyKey",
    "OutboxRow",
    "OutboxStore",
    "PostgresStore",
    "SqliteStore",
    "fingerprint",
    "store_for",
]


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the settings name, or None for PostgreSQL."""
    url = settings.database_url.reveal()
    if not url:
        return settings.state_dir / "outbox.sqlite3"
    if url.startswith("sqlite://"):
        return Path(url.removeprefix("sqlite://"))  # sqlite:///abs/file, sqlite://rel/file
    return None


def store_for(settings: Settings) -> OutboxStore:
    """The store EVENTIDE_DATABASE_URL configures (not opened yet), with a codec
    under the configured limits (EVENTIDE_MAX_*)."""
    codec = EventCodec(limits=settings.limits)
    path = sqlite_path(settings)
    if path is not None:
        return SqliteStore(path, codec=codec)
    # An API whose relay runs in another process announces its commits to it.
    return PostgresStore(settings.database_url.reveal(), notify=not settings.api_relay, codec=codec)

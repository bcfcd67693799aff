"""The outbox store contract against SQLite, and SQLite's relay lease."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from api.store import Claim, OutboxStore, SqliteStore

from .contract import OpenStore, OutboxStoreContract, execute, place


def path_of(database_url: str) -> Path:
    return Path(database_url.removeprefix("sqlite://"))


class TestSqliteStore(OutboxStoreContract):
    optimistic = False

    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'outbox.sqlite3'}"

    def create_store(self, database_url: str, **options: Any) -> OutboxStore:
        return SqliteStore(path_of(database_url), **options)

    def unreachable_url(self, database_url: str) -> str:
        return f"sqlite://{path_of(database_url).parent}"  # a directory, not a file

    def check_second_claim(self, first: Claim, second: Claim) -> None:
        assert second.rows == []  # one lease holder at a time

    async def test_a_command_answered_is_on_disk(self, store: OutboxStore) -> None:
        assert isinstance(store, SqliteStore)
        with sqlite3.connect(store.path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL

    async def test_one_relay_holds_the_lease_until_it_releases_it(
        self, open_store: OpenStore
    ) -> None:
        first, second = await open_store(), await open_store()
        await execute(first, "o-1", place("o-1"))
        async with first.claim("relay-a", 100) as claim:
            assert len(claim.rows) == 1
        # Closing a claim keeps the lease: the relay claims again next.
        async with second.claim("relay-b", 100) as claim:
            assert claim.rows == []
        await first.release("relay-a")
        async with second.claim("relay-b", 100) as claim:
            assert len(claim.rows) == 1
        async with first.claim("relay-a", 100) as claim:
            assert claim.rows == []

    async def test_the_lease_of_a_relay_that_died_expires(self, open_store: OpenStore) -> None:
        first, second = await open_store(lease_ttl=0.4), await open_store(lease_ttl=0.4)
        await execute(first, "o-1", place("o-1"))
        async with first.claim("relay-a", 100):
            pass  # then it dies: no release, no renewal
        async with second.claim("relay-b", 100) as claim:
            assert claim.rows == []
        time.sleep(0.5)
        async with second.claim("relay-b", 100) as claim:
            assert [r.key for r in claim.rows] == ["o-1"]

    async def test_marks_of_a_relay_that_lost_its_lease_are_not_recorded(
        self, store: OutboxStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert isinstance(store, SqliteStore)
        await execute(store, "o-1", place("o-1"))
        async with store.claim("relay-a", 100) as claim:
            claim.mark_published([r.id for r in claim.rows])
            # Its lease expired meanwhile and another relay took it over.
            with sqlite3.connect(store.path) as other:
                other.execute(
                    "UPDATE relay_lease SET owner = 'relay-b', expires_at = ?", (time.time() + 60,)
                )
        assert await store.outbox_counts() == {"pending": 1, "published": 0}
        assert "relay-a lost its lease mid-batch; 1 rows stay pending" in caplog.text
        assert caplog.records[-1].levelno == logging.WARNING

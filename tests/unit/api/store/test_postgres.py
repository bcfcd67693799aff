"""The outbox store contract against a real PostgreSQL server, and what only
PostgreSQL does: shards claimed side by side, commits announced by NOTIFY.

The server is the tests' own (tests/fixtures/postgres.py): started by the
session fixture when EVENTIDE_TEST_DATABASE_URL is unset and nothing answers
on EVENTIDE_TEST_PG_PORT; each test gets a fresh database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from api.aggregate import CommandMeta, place_order
from api.service import CommandService
from api.store import Claim, OutboxStore, PostgresStore, store_for
from api.store.base import shard_of
from streams.settings import Settings

from .contract import OutboxStoreContract, execute, order, place


@pytest.mark.postgres
class TestPostgresStore(OutboxStoreContract):
    optimistic = True

    @pytest.fixture
    def database_url(self, make_database_url: Callable[[], str]) -> str:
        return make_database_url()

    def create_store(self, database_url: str, **options: Any) -> OutboxStore:
        return PostgresStore(database_url, **options)

    def unreachable_url(self, database_url: str) -> str:
        return "postgresql://eventide@127.0.0.1:1/postgres"  # nothing listens on port 1

    def check_second_claim(self, first: Claim, second: Claim) -> None:
        # Relays share the shards: each claim tries 8 of the 16, at random.
        assert second.rows, "the second relay got nothing"
        assert not first.shards & second.shards

    async def test_the_url_is_shown_without_its_password(self) -> None:
        store = PostgresStore("postgresql://eventide:s3cret@db.example:5432/outbox")
        assert repr(store) == "PostgresStore('postgresql://eventide:***@db.example:5432/outbox')"

    async def test_claims_of_one_relay_take_the_shards_the_others_do_not_hold(
        self, store: OutboxStore
    ) -> None:
        for n in range(60):
            await execute(store, f"o-{n}", place(f"o-{n}"))
        async with store.claim("relay-a", 1000) as first:
            assert first.shards
            assert {shard_of(r.key) for r in first.rows} == first.shards
            async with store.claim("relay-a", 1000, exclude=first.shards) as second:
                assert second.shards and not second.shards & first.shards
                assert {shard_of(r.key) for r in second.rows} == second.shards

    async def test_an_api_with_its_relay_elsewhere_wakes_it_on_commit(
        self, database_url: str
    ) -> None:
        env = {"EVENTIDE_DATABASE_URL": database_url, "EVENTIDE_API_RELAY": "false"}
        settings = Settings.from_env(env)
        api, relay = store_for(settings), store_for(settings)
        assert isinstance(api, PostgresStore)
        await api.open()
        await relay.open()
        woken = asyncio.Event()
        try:
            await relay.listen(woken.set)
            await CommandService(settings, api).handle(
                "order", "n-1", place_order, order("n-1"), CommandMeta()
            )
            await asyncio.wait_for(woken.wait(), 10)
        finally:
            await api.close()
            await relay.close()

"""Racing commands on one entity, from one process and from two: one wins, the
others are decided again against the new state. Covers the PostgreSQL store's
cached histories and group appends, and SQLite's group commit."""

from __future__ import annotations

import asyncio

import pytest

from api.aggregate import CommandMeta, confirm_payment, place_order
from api.exceptions import ConflictError
from api.service import CommandService
from api.store import PostgresStore, store_for

pytestmark = pytest.mark.integration

ITEM = {"sku": "s", "quantity": 1, "unitPrice": 5.0}


def test_racing_commands_and_stale_caches_append_once(api_settings):
    settings = api_settings()

    async def scenario() -> None:
        a, b = store_for(settings), store_for(settings)
        await a.open()
        await b.open()
        try:
            first, second = CommandService(settings, a), CommandService(settings, b)

            async def place(service: CommandService, oid: str) -> None:
                data = {"orderId": oid, "customerId": "c", "items": [ITEM], "currency": "EUR"}
                await service.handle("order", oid, place_order, data, CommandMeta())

            async def pay(service: CommandService, oid: str, payment: str) -> object:
                data = {"orderId": oid, "paymentId": payment}
                return await service.handle("order", oid, confirm_payment, data, CommandMeta())

            # The first process remembers the order as pending; the second pays it.
            await place(first, "stale")
            await pay(second, "stale", "p-2")
            with pytest.raises(ConflictError, match="already confirmed"):
                await pay(first, "stale", "p-1")
            # A second place of the same id, decided without reading (it creates):
            with pytest.raises(ConflictError, match="already exists"):
                await place(second, "stale")

            # Ten payments at once from both processes: exactly one is accepted.
            await place(first, "race")
            results = await asyncio.gather(
                *(pay(first if n % 2 else second, "race", f"p-{n}") for n in range(10)),
                return_exceptions=True,
            )
            accepted = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, BaseException)]
            assert len(accepted) == 1, results
            assert all(isinstance(r, ConflictError) for r in refused), refused

            for stream in ("order:stale", "order:race"):
                names = [e.name for e in await a.load_stream(stream)]
                assert names == ["order.placed", "order.payment_confirmed"]
            assert await a.outbox_counts() == {"pending": 4, "published": 0}
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_an_api_with_its_relay_elsewhere_wakes_it_on_commit(api_settings, backend):
    if backend != "postgresql":
        pytest.skip("SQLite has no notifications: a relay in another process polls")
    settings = api_settings(EVENTIDE_API_RELAY="false")

    async def scenario() -> None:
        api, relay = store_for(settings), store_for(settings)
        assert isinstance(api, PostgresStore)
        await api.open()
        await relay.open()
        woken = asyncio.Event()
        try:
            await relay.listen(woken.set)
            data = {"orderId": "n-1", "customerId": "c", "items": [ITEM], "currency": "EUR"}
            await CommandService(settings, api).handle(
                "order", "n-1", place_order, data, CommandMeta()
            )
            await asyncio.wait_for(woken.wait(), 10)
        finally:
            await api.close()
            await relay.close()

    asyncio.run(scenario())

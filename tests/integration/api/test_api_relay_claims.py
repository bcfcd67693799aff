"""Several relays: while one holds a claim, no other is given rows of the same entity."""

from __future__ import annotations

import asyncio

import pytest

from api.aggregate import CommandMeta, place_order
from api.store import store_for

pytestmark = pytest.mark.integration


def test_concurrent_claims_never_share_an_entity(api_settings, backend):
    settings = api_settings()

    async def scenario() -> tuple[list, list, int]:
        first, second = store_for(settings), store_for(settings)
        await first.open()
        await second.open()
        try:
            item = {"sku": "s", "quantity": 1, "unitPrice": 1.0}
            for n in range(60):
                oid = f"claim-{n}"
                data = {"orderId": oid, "customerId": "c", "items": [item], "currency": "EUR"}
                await first.execute(
                    f"order:{oid}", "t", lambda h, d=data: place_order(h, d, CommandMeta()), None
                )
            async with first.claim("relay-a", 1000) as a:
                async with second.claim("relay-b", 1000) as b:
                    b.mark_published([r.id for r in b.rows])
                a.mark_published([r.id for r in a.rows])
            counts = await first.outbox_counts()
            return a.rows, b.rows, counts["published"]
        finally:
            await first.close()
            await second.close()

    rows_a, rows_b, published = asyncio.run(scenario())
    keys_a, keys_b = {r.key for r in rows_a}, {r.key for r in rows_b}
    assert keys_a, "the first relay got nothing"
    assert not keys_a & keys_b, "two relays were given rows of the same order"
    assert published == len(rows_a) + len(rows_b)  # what each marked, nothing twice
    if backend == "sqlite":
        assert keys_b == set()  # one lease holder at a time
    else:
        assert keys_b, "PostgreSQL relays share the shards"  # they try 8 of 16 at random

"""HTTP query views of the read models, served by every worker.

A request for a key whose partition another worker owns is proxied to that
worker by Faust's table router; a request that arrives while partitions are
being assigned gets 503 and can be retried.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from .orders import OrderView


def register_views(app: faust.App, orders: Any) -> None:
    """Add ``GET /orders/{orderId}`` and ``GET /health`` to the app's web server."""

    @app.page("/orders/{order_id}")
    class OrderQuery(View):
        @app.table_route(table=orders, match_info="order_id")  # type: ignore[arg-type]
        async def get(self, request: Request, order_id: str) -> Response:
            doc = orders.get(order_id)
            if doc is None:
                return self.json({"error": "order not found", "orderId": order_id}, status=404)
            return self.json(OrderView.from_dict(doc).to_dict())

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            ready = recovered and not app.rebalancing and not app.in_recovery
            body = {
                "status": "ready" if ready else "starting",
                "recovered": recovered,
                "rebalancing": bool(app.rebalancing),
                "assignment": sorted(
                    f"{tp.topic}[{tp.partition}]" for tp in app.assignor.assigned_actives()
                ),
            }
            return self.json(body, status=200 if ready else 503)

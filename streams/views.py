"""HTTP query views of the read models, served by every worker.

``GET /orders/{orderId}`` and ``GET /customers/{customerId}`` answer from the
local store when this worker owns the key's partition; otherwise the request
is proxied to the owner named in the group's assignment. While partitions are
being (re)assigned the answer is 503 with a JSON body; retry it.

``POST /admin/rebuild/{table}`` starts a rebuild of a read model on this
worker and ``GET /admin/rebuild/{table}`` reports its progress
(streams/rebuild.py). Unlike pause and resume, these are always served: the
``eventide rebuild`` command must work against any worker, and a rebuild
loses nothing (it replays the source topics into a copy and switches to it
only once complete; the worker's port is an internal one, like its queries).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.web import Request, Response, View

from schemas.exceptions import DataKeyNotFoundError, PersonalDataError

from .engine import Lookup, ProjectionEngine
from .exceptions import (
    NotRebuildableError,
    RebuildError,
    RebuildRunningError,
    RebuildUnavailableError,
    UnknownReadModelError,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .projection import Projection, Query
from .rebuild import RebuildManager

FORWARDED = "X-Eventide-Forwarded"

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownReadModelError, 404),
    (NotRebuildableError, 400),
    (RebuildRunningError, 409),
    (RebuildUnavailableError, 503),
    (DataKeyNotFoundError, 503),
    (PersonalDataError, 500),
)


def http_status(exc: Exception) -> int:
    """The HTTP status the worker answers an error with (errors carry none)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


QueryHandler = Callable[[View, Request, str, str, str], Awaitable[Response]]


def register_views(
    app: faust.App,
    engine: ProjectionEngine,
    rebuilds: RebuildManager | None = None,
    declared: Iterable[type[Projection]] = (),
) -> None:
    """Add the query views and ``GET /health`` to the app's web server.

    Every declared projection with a :class:`~streams.projection.Query` gets
    ``GET /<path>/{id}``, served by the engine when this worker runs it (404
    naming the read model when it does not).

    Also ``GET /metrics`` (Prometheus text format), ``POST`` and ``GET
    /admin/rebuild/{table}`` (with ``rebuilds``) and, with
    EVENTIDE_ADMIN_ENDPOINTS=true, ``POST /admin/pause`` and ``/admin/resume``.
    """

    async def query(view: View, request: Request, table: str, id_field: str, key: str) -> Response:
        try:
            where, found = engine.lookup(table, key)
        except PersonalDataError as exc:
            # The customer's data key is not read yet (503, retry), or a value
            # does not decrypt (500: refused rather than shown).
            return view.json({"error": str(exc), id_field: key}, status=http_status(exc))
        if where is Lookup.LOCAL:
            if found is None:
                return view.json({"error": f"{id_field[:-2]} not found", id_field: key}, status=404)
            return view.json(found)
        if where is Lookup.ABSENT:
            return view.json(
                {"error": f"this worker does not run the {table} read model", id_field: key},
                status=404,
            )
        if where is Lookup.REMOTE and FORWARDED not in request.headers:
            return await _proxy(app, view, request, found)
        return view.json(
            {"error": "partition is being assigned, retry shortly", id_field: key}, status=503
        )

    for cls in declared:
        if cls.spec.query is not None:
            _register_query(app, query, cls.spec.name, cls.spec.query)

    _register_status(app, engine)
    if rebuilds is not None:
        _register_rebuild(app, rebuilds)
    if engine.settings.admin_endpoints:
        _register_admin(app, engine)


def _register_status(app: faust.App, engine: ProjectionEngine) -> None:
    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            body = {
                "status": "ready" if engine.ready else "starting",
                "partitions": sorted(f"{t}[{p}]" for t, p in engine.stores),
                "standbys": sorted(f"{t}[{p}]" for t, p in engine.standby_stores),
                "eventsProcessed": engine.events_processed,
            }
            return self.json(body, status=200 if engine.ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type: pass the header whole.
            return self.bytes(
                engine.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
            )


def _register_admin(app: faust.App, engine: ProjectionEngine) -> None:
    @app.page("/admin/{action}")
    class Admin(View):
        async def post(self, request: Request, action: str) -> Response:
            consumer = engine.consumer
            if action not in ("pause", "resume") or consumer is None:
                return self.json({"error": f"unknown action {action!r}"}, status=404)
            partitions = sorted(consumer.assignment())
            if action == "pause":
                consumer.pause(*partitions)
            else:
                consumer.resume(*partitions)
            return self.json({"action": action, "partitions": [str(tp) for tp in partitions]})


def _register_query(app: faust.App, query: QueryHandler, table: str, spec: Query) -> None:
    @app.page(f"/{spec.path}/{{key}}", name=f"query-{table}")
    class TableQuery(View):
        async def get(self, request: Request, key: str) -> Response:
            return await query(self, request, table, spec.id_field, key)


def _register_rebuild(app: faust.App, rebuilds: RebuildManager) -> None:
    @app.page("/admin/rebuild/{table}")
    class Rebuild(View):
        async def post(self, request: Request, table: str) -> Response:
            try:
                rebuilds.start(table)
            except RebuildRunningError as exc:
                body = {**rebuilds.status(table), "error": str(exc)}
                return self.json(body, status=http_status(exc))
            except RebuildError as exc:
                return self.json({"error": str(exc), "table": table}, status=http_status(exc))
            return self.json(rebuilds.status(table), status=202)

        async def get(self, request: Request, table: str) -> Response:
            try:
                return self.json(rebuilds.status(table))
            except RebuildError as exc:
                return self.json({"error": str(exc), "table": table}, status=http_status(exc))


async def _proxy(app: faust.App, view: View, request: Request, owner: Any) -> Response:
    url = f"{owner}{request.url.path}"
    async with app.http_client.get(url, headers={FORWARDED: "1"}) as response:
        return view.bytes(
            await response.read(),
            content_type=response.content_type,
            status=response.status,
        )

"""HTTP query views of the read models, served by every worker.

``GET /orders/{orderId}`` and ``GET /customers/{customerId}`` answer from the
local store when this worker owns the key's partition; otherwise the request
is proxied to the owner named in the group's assignment. While partitions are
being (re)assigned the answer is 503 with a JSON body; retry it.

Every request passes the access policy first (streams/httpaccess.py, an
aiohttp middleware): bearer token and role (``/admin/*`` needs admin, other
paths read; ``/health`` and ``/metrics`` open by default), rate limit, body
and header sizes. Each admin action writes an audit line.

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
from aiohttp import web
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
from .health import WorkerHealth
from .httpaccess import ANONYMOUS, AccessPolicy, Principal, Refusal, audit, correlation_id
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .projection import Projection, Query
from .rebuild import RebuildManager

FORWARDED = "X-Eventide-Forwarded"
PRINCIPAL = "eventide.principal"
"""Key of the request's :class:`~streams.httpaccess.Principal` on an aiohttp request."""

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
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(refusal: Refusal) -> web.Response:
    return web.Response(
        body=refusal.body(),
        status=refusal.status,
        content_type="application/json",
        headers=dict(refusal.headers),
    )


def access_middleware(access: AccessPolicy) -> Any:
    """The aiohttp middleware that applies ``access`` to every request of the worker."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        size = len(request.raw_path) + sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        refusal = access.header_refusal(size)
        if refusal is None:
            admitted = access.authorize(
                request.method, request.path, request.headers.get("Authorization"), request.remote
            )
            if isinstance(admitted, Refusal):
                refusal = admitted
            elif (request.content_length or 0) > access.max_body_bytes:
                refusal = access.body_refusal()
            elif request.body_exists:
                try:
                    await request.read()  # bounded by client_max_size; kept for the handler
                except web.HTTPRequestEntityTooLarge:
                    refusal = access.body_refusal()
        if refusal is not None:
            return _refusal(refusal)
        request[PRINCIPAL] = admitted
        return await handler(request)

    return guard


def web_application_options(access: AccessPolicy) -> dict[str, Any]:
    """The options of the worker's aiohttp application (Faust's
    ``web_application_options``): the access middleware, the body size limit and
    the size limit of each request line and header line."""
    return {
        "middlewares": [access_middleware(access)],
        "client_max_size": access.max_body_bytes,
        "handler_args": {
            "max_line_size": access.max_header_bytes,
            "max_field_size": access.max_header_bytes,
        },
    }


def _principal(request: Request) -> Principal:
    found = request.get(PRINCIPAL)  # type: ignore[attr-defined]
    return found if isinstance(found, Principal) else ANONYMOUS


def _audited(
    view: View, request: Request, action: str, status: int, body: Any, **what: Any
) -> Response:
    """Answer an admin action with ``body`` and write its audit line."""
    cid = correlation_id(request.headers.get("X-Correlation-Id"))
    audit("admin", _principal(request).name, cid, action=action, status=status, **what)
    return view.json(body, status=status, headers={"X-Correlation-Id": cid})


def register_views(
    app: faust.App,
    engine: ProjectionEngine,
    rebuilds: RebuildManager | None = None,
    declared: Iterable[type[Projection]] = (),
    health: WorkerHealth | None = None,
) -> None:
    """Add the query views and ``GET /health`` to the app's web server.

    ``health`` answers ``/health`` (by default one without a broker probe: ready
    once partitions are assigned, degraded while a table partition cannot be
    restored).

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

    if health is None:
        health = WorkerHealth(engine, stale_after=float("inf"))
    _register_status(app, engine, health)
    if rebuilds is not None:
        _register_rebuild(app, rebuilds)
    if engine.settings.admin_endpoints:
        _register_admin(app, engine)


def _register_status(app: faust.App, engine: ProjectionEngine, health: WorkerHealth) -> None:
    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            status, body = health.status()  # ready, starting or degraded (streams/health.py)
            return self.json(body, status=status)

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
            body = {"action": action, "partitions": [str(tp) for tp in partitions]}
            return _audited(self, request, action, 200, body, partitions=len(partitions))


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
                return _audited(self, request, "rebuild", http_status(exc), body, table=table)
            except RebuildError as exc:
                body = {"error": str(exc), "table": table}
                return _audited(self, request, "rebuild", http_status(exc), body, table=table)
            return _audited(self, request, "rebuild", 202, rebuilds.status(table), table=table)

        async def get(self, request: Request, table: str) -> Response:
            try:
                return self.json(rebuilds.status(table))
            except RebuildError as exc:
                return self.json({"error": str(exc), "table": table}, status=http_status(exc))


async def _proxy(app: faust.App, view: View, request: Request, owner: Any) -> Response:
    url = f"{owner}{request.url.path}"
    headers = {FORWARDED: "1"}
    for name in ("Authorization", "X-Correlation-Id"):  # the owner checks the token again
        if name in request.headers:
            headers[name] = request.headers[name]
    async with app.http_client.get(url, headers=headers) as response:
        return view.bytes(
            await response.read(),
            content_type=response.content_type,
            status=response.status,
        )

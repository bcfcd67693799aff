"""The command API: an ASGI app (FastAPI) with its OpenAPI description at /docs
and Prometheus metrics at /metrics.

Every accepted command answers 201 with the event id and correlation id; a
retried POST with the same ``Idempotency-Key`` gets the first answer again
(header ``Idempotent-Replayed: true``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from streams.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from streams.metrics import exposition
from streams.settings import Settings

from . import aggregate
from .aggregate import CommandMeta
from .exceptions import (
    ApiError,
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    NotFoundError,
    StoreError,
)
from .metrics import ApiMetrics, RelayMetrics, new_registry
from .models import CancelOrder, ConfirmPayment, CreateUser, PlaceOrder, ShipOrder
from .relay import OutboxRelay
from .service import CommandService, Decider
from .store import IdempotencyKey, OutboxStore, fingerprint, store_for

logger = logging.getLogger(__name__)

HEADER_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
REF = "#/components/schemas/"
MODELS: tuple[type[BaseModel], ...] = (
    CreateUser,
    PlaceOrder,
    ConfirmPayment,
    ShipOrder,
    CancelOrder,
)
HEADER_DOCS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": HEADER_RE.pattern},
        "description": "Retries with the same key get the first answer; nothing happens twice.",
    },
    {
        "name": "X-Correlation-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": HEADER_RE.pattern},
        "description": "Correlation id to put on the event (default: the event's id).",
    },
]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "The order does not exist"},
    409: {"description": "Not allowed in the entity's current state"},
    422: {"description": "Invalid request: each error names the field and the reason"},
}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "header", "query"):
        where = parts.pop(0)
        if where == "header" and parts:
            return f"header {parts[0]}"
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


@dataclass(frozen=True)
class CommandRoute:
    """One command endpoint: what it validates and which decider it runs."""

    kind: str
    """Entity kind: ``order`` or ``user`` (its topic and stream prefix)."""
    id_field: str
    """Name of the entity id in the event (``orderId``, ``userId``)."""
    model: type[BaseModel]
    """The request body's model."""
    decider: Decider
    """The aggregate function deciding the command."""
    name: str
    """The decider's name: the ``command`` label of the metrics."""


Answer = tuple[int, bytes, dict[str, str]]
"""Status, JSON body and extra headers of a command's HTTP answer."""


def _error_body(errors: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"error": "invalid request", "errors": errors})


def _validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        if e.get("type") == "json_invalid":
            error = e.get("ctx", {}).get("error", "")
            out.append({"field": "body", "reason": f"not valid JSON: {error}"})
        else:
            out.append({"field": _field(e.get("loc", ())), "reason": e.get("msg", "")})
    return out


STATUS: tuple[tuple[type[ApiError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidCommandError, 422),
    (IdempotencyKeyReusedError, 422),
    # ConcurrencyError too, when a command lost the race every time it was retried.
    (StoreError, 503),
)
"""The HTTP status of each error class (errors carry none); the first match wins."""


def http_status(exc: ApiError) -> int:
    """The HTTP status the API answers an error with: 500 for an unmapped one."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _api_error(exc: ApiError) -> tuple[int, bytes]:
    if isinstance(exc, InvalidCommandError):
        return http_status(exc), _error_body([{"field": exc.field, "reason": exc.reason}])
    return http_status(exc), orjson.dumps({"error": str(exc)})


def _checked_header(name: str, value: str | None) -> str | None:
    if value is not None and not HEADER_RE.match(value):
        raise InvalidCommandError(
            f"header {name}", "1-100 letters, digits and ._:- expected", value
        )
    return value


class CommandProcessor:
    """Turns one command request (path, body bytes, headers) into its answer.

    Shared by the fast ASGI path (:class:`CommandApi`) and the FastAPI routes
    (which describe the commands in OpenAPI and serve them under a mounted or
    wrapped app): same validation, same 422 naming each field and reason."""

    def __init__(self, service: CommandService, metrics: ApiMetrics) -> None:
        self.service = service
        self.metrics = metrics

    async def answer(
        self,
        route: CommandRoute,
        path: str,
        order_id: str | None,
        raw: bytes,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> Answer:
        started = time.perf_counter()
        try:
            status, body, headers = await self._answer(
                route, path, order_id, raw, idempotency_key, correlation_id
            )
        except ApiError as exc:
            status, body = _api_error(exc)
            headers = {}
        self.metrics.command(route.name, status, time.perf_counter() - started)
        return status, body, headers

    async def _answer(
        self,
        route: CommandRoute,
        path: str,
        order_id: str | None,
        raw: bytes,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> Answer:
        try:
            body = route.model.model_validate_json(raw)
        except ValidationError as exc:
            return 422, _error_body(_validation_errors(exc.errors())), {}
        data = body.model_dump()
        id_field = route.id_field
        if order_id is not None:
            data = {id_field: order_id, **data}
        elif not data[id_field]:
            data[id_field] = f"{route.kind[0]}-{uuid.uuid4().hex}"
        idem = None
        if _checked_header("Idempotency-Key", idempotency_key) is not None:
            assert idempotency_key is not None
            canonical = orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
            idem = IdempotencyKey(idempotency_key, fingerprint("POST", path, canonical))
        meta = CommandMeta(correlation_id=_checked_header("X-Correlation-Id", correlation_id))
        outcome = await self.service.handle(
            route.kind, data[id_field], route.decider, data, meta, idem
        )
        headers = {"X-Correlation-Id": outcome.body["correlationId"]}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return outcome.status, orjson.dumps(outcome.body), headers


ORDER_ACTION_RE = re.compile(r"^/orders/([^/]+)/([a-z]+)$")


class CommandApi(FastAPI):
    """The FastAPI app with a fast path for the command POSTs.

    FastAPI's routing, dependency and middleware layers cost more CPU than a
    whole command's database work, so ``POST`` requests to a command path
    are served straight from the ASGI scope by :class:`CommandProcessor`;
    everything else (``/docs``, ``/openapi.json``, ``/health``, ``/metrics``,
    404s and 405s) goes through FastAPI as usual.
    """

    fast_routes: dict[str, CommandRoute]
    order_routes: dict[str, CommandRoute]
    processor: CommandProcessor
    max_body: int

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            order_id = None
            route = self.fast_routes.get(path)
            if route is None and (m := ORDER_ACTION_RE.match(path)) is not None:
                route = self.order_routes.get(m.group(2))
                order_id = m.group(1)
            if route is not None:
                await self._serve(route, path, order_id, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(
        self,
        route: CommandRoute,
        path: str,
        order_id: str | None,
        scope: Any,
        receive: Any,
        send: Any,
    ) -> None:
        raw = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > self.max_body:
                await _send(send, 413, orjson.dumps({"error": f"body over {self.max_body} bytes"}))
                return
        idempotency_key = correlation_id = None
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
            elif name == b"x-correlation-id":
                correlation_id = value.decode("latin-1")
        try:
            status, body, headers = await self.processor.answer(
                route, path, order_id, raw, idempotency_key, correlation_id
            )
        except Exception:
            logger.exception("POST %s failed", path)
            await _send(send, 500, orjson.dumps({"error": "internal error, see the API's log"}))
            return
        await _send(send, status, body, headers)


async def _send(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        raw_headers.extend((k.lower().encode(), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def create_api(
    settings: Settings,
    store: OutboxStore | None = None,
    registry: CollectorRegistry | None = None,
) -> CommandApi:
    """The ASGI app; opens the store and (per EVENTIDE_API_RELAY) runs a relay."""
    store = store if store is not None else store_for(settings)
    registry = registry if registry is not None else new_registry()
    metrics = ApiMetrics(registry)
    relay = (
        OutboxRelay(settings, store, metrics=RelayMetrics(registry)) if settings.api_relay else None
    )
    service = CommandService(settings, store, relay.wake if relay else None)
    processor = CommandProcessor(service, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        if relay is not None:
            await relay.preflight()  # refused credentials stop the API at start-up
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop)) if relay else None
        logger.info("command API on %r, relay %s", store, "inside" if relay else "separate")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            await store.close()

    app = CommandApi(
        title="Eventide command API",
        version="1.0.0",
        description="Commands become events through a transactional outbox (see DESIGN.md).",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.relay = relay
    app.state.registry = registry
    app.processor = processor
    app.max_body = settings.max_record_bytes
    app.fast_routes = {}
    app.order_routes = {}

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": "invalid request", "errors": _validation_errors(list(exc.errors()))},
            status_code=422,
        )

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        status, body = _api_error(exc)
        return Response(body, status_code=status, media_type="application/json")

    async def run(request: Request, route: CommandRoute, order_id: str | None) -> Response:
        status, body, headers = await processor.answer(
            route,
            request.url.path,
            order_id,
            await request.body(),
            request.headers.get("Idempotency-Key"),
            request.headers.get("X-Correlation-Id"),
        )
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def command(
        path: str, model: type[BaseModel], kind: str, id_field: str, decider: Decider, summary: str
    ) -> None:
        route = CommandRoute(kind, id_field, model, decider, decider.__name__)
        extra = {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"{REF}{model.__name__}"}}},
            },
            "parameters": HEADER_DOCS,
        }
        options: dict[str, Any] = {
            "status_code": 201,
            "responses": ERRORS,
            "summary": summary,
            "description": model.__doc__,
            "openapi_extra": extra,
            "name": decider.__name__,
        }
        if "{order_id}" in path:
            app.order_routes[path.rsplit("/", 1)[1]] = route

            async def on_order(request: Request, order_id: str) -> Response:
                return await run(request, route, order_id)

            app.post(path, **options)(on_order)
        else:
            app.fast_routes[path] = route

            async def on_new(request: Request) -> Response:
                return await run(request, route, None)

            app.post(path, **options)(on_new)

    command("/users", CreateUser, "user", "userId", aggregate.create_user, "Create a user")
    command("/orders", PlaceOrder, "order", "orderId", aggregate.place_order, "Place an order")
    command(
        "/orders/{order_id}/payment", ConfirmPayment, "order", "orderId",
        aggregate.confirm_payment, "Confirm an order's payment",
    )  # fmt: skip
    command(
        "/orders/{order_id}/shipment", ShipOrder, "order", "orderId",
        aggregate.ship_order, "Ship a paid order",
    )  # fmt: skip
    command(
        "/orders/{order_id}/cancel", CancelOrder, "order", "orderId",
        aggregate.cancel_order, "Cancel an order not shipped yet",
    )  # fmt: skip

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )  # fmt: skip
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in MODELS:
                doc = model.model_json_schema(ref_template=REF + "{model}")
                components.update(doc.pop("$defs", {}))
                components[model.__name__] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", summary="Prometheus metrics: commands, latency, relay (when inside)")
    async def metrics_page() -> Response:
        return Response(exposition(registry), media_type=METRICS_CONTENT_TYPE)

    @app.get("/health", summary="200 when the database answers")
    async def health() -> dict[str, Any]:
        counts = await store.outbox_counts()
        return {"status": "ready", "database": store.kind, "outbox": counts}

    return app


def run_api(settings: Settings) -> None:
    """``eventide api``: serve the command API until SIGINT/SIGTERM."""
    import uvicorn

    config = uvicorn.Config(
        create_api(settings),
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        # No proxy in front by default: skip the X-Forwarded-* middleware.
        proxy_headers=False,
    )
    uvicorn.Server(config).run()

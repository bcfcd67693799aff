"""The command API: an ASGI app (FastAPI) with its OpenAPI description at /docs
and Prometheus metrics at /metrics.

Every accepted command answers 201 with the event id and correlation id; a
retried POST with the same ``Idempotency-Key`` gets the first answer again
(header ``Idempotent-Replayed: true``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from streams.asyncapi import document as asyncapi_for
from streams.httpaccess import ANONYMOUS, AccessPolicy, Principal, Refusal, audit
from streams.keys import KafkaKeyStore, KeyStore
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
    401: {"description": "No bearer token, or an unknown one"},
    403: {"description": "The token's role may not send commands (needs write)"},
    404: {"description": "The order does not exist"},
    409: {"description": "Not allowed in the entity's current state"},
    413: {"description": "Body over EVENTIDE_HTTP_MAX_BODY_BYTES"},
    415: {"description": "The body is not sent as application/json"},
    422: {"description": "Invalid request: each error names the field and the reason"},
    429: {"description": "Rate limit exceeded: retry after the Retry-After seconds"},
}
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/asyncapi.json")
"""Served without a token: the API's description holds no data."""


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


def _is_json(content_type: str | None) -> bool:
    """``application/json``, with no charset or UTF-8 (the only one JSON has)."""
    if not content_type:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


UNSUPPORTED_MEDIA: Answer = (
    415,
    orjson.dumps(
        {"error": "send the command as JSON with the header Content-Type: application/json"}
    ),
    {},
)


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated = []
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.repeated.append(key)
            seen.add(key)
    return obj


def _repeated_key(node: Any, path: str = "") -> str | None:
    if isinstance(node, _Object):
        if node.repeated:
            key = node.repeated[0]
            return f"{path}.{key}" if path else key
        for key, value in node.items():
            found = _repeated_key(value, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found = _repeated_key(value, f"{path}[{n}]")
            if found:
                return found
    return None


def duplicate_key(raw: bytes) -> str | None:
    """The path of a key given twice in one JSON object of ``raw`` (``items[0].sku``),
    or None. Parsers keep the last value silently; a command must say what it means."""
    if raw.count(b'"') < 4:
        return None
    try:
        doc = json.loads(raw, object_pairs_hook=_object)
    except (ValueError, RecursionError):
        return None  # not JSON: the model's validation says so
    return _repeated_key(doc)


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
        content_type: str | None = "application/json",
        principal: Principal = ANONYMOUS,
    ) -> Answer:
        started = time.perf_counter()
        try:
            if not _is_json(content_type):
                status, body, headers = UNSUPPORTED_MEDIA
            else:
                status, body, headers = await self._answer(
                    route, path, order_id, raw, idempotency_key, correlation_id
                )
        except ApiError as exc:
            status, body = _api_error(exc)
            headers = {}
        self.metrics.command(route.name, status, time.perf_counter() - started)
        if 200 <= status < 300:
            self._audit(route, principal, status, body, headers)
        return status, body, headers

    @staticmethod
    def _audit(
        route: CommandRoute, principal: Principal, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        # Ids and outcome only: the body's other fields may be personal (e-mail, name).
        doc = orjson.loads(body)
        what: dict[str, Any] = {"command": route.name, "status": status, "eventId": doc["eventId"]}
        if route.kind == "order":  # a userId may be chosen by the client (an e-mail address)
            what["orderId"] = doc.get("orderId")
        if "Idempotent-Replayed" in headers:
            what["replayed"] = True
        audit("command", principal.name, doc["correlationId"], **what)

    async def _answer(
        self,
        route: CommandRoute,
        path: str,
        order_id: str | None,
        raw: bytes,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> Answer:
        repeated = duplicate_key(raw)
        if repeated is not None:
            key = repeated.rsplit(".", 1)[-1]
            reason = f"duplicate key {key!r} in one JSON object: send each key once"
            return 422, _error_body([{"field": repeated, "reason": reason}]), {}
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
    access: AccessPolicy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            admitted = self._admit(scope)
            if isinstance(admitted, Refusal):
                await _refuse(send, admitted)
                return
            scope[PRINCIPAL] = admitted
            if scope["method"] == "POST":
                path = scope["path"]
                order_id = None
                route = self.fast_routes.get(path)
                if route is None and (m := ORDER_ACTION_RE.match(path)) is not None:
                    route = self.order_routes.get(m.group(2))
                    order_id = m.group(1)
                if route is not None:
                    await self._serve(route, path, order_id, scope, receive, send, admitted)
                    return
        await super().__call__(scope, receive, send)

    def _admit(self, scope: Any) -> Principal | Refusal:
        """Head size, rate limit, token and role: who the request is served for."""
        size = len(scope["path"]) + len(scope.get("query_string", b""))
        authorization = None
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"authorization":
                authorization = value.decode("latin-1")
        refusal = self.access.header_refusal(size)
        if refusal is not None:
            return refusal
        client = scope.get("client")
        return self.access.authorize(
            scope["method"], scope["path"], authorization, client[0] if client else None
        )

    async def _serve(
        self,
        route: CommandRoute,
        path: str,
        order_id: str | None,
        scope: Any,
        receive: Any,
        send: Any,
        principal: Principal,
    ) -> None:
        idempotency_key = correlation_id = content_type = None
        limit = self.access.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
            elif name == b"x-correlation-id":
                correlation_id = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(send, self.access.body_refusal())
                return
        raw = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > limit:
                await _refuse(send, self.access.body_refusal())
                return
        try:
            status, body, headers = await self.processor.answer(
                route, path, order_id, raw, idempotency_key, correlation_id, content_type, principal
            )
        except Exception:
            logger.exception("POST %s failed", path)
            await _send(send, 500, orjson.dumps({"error": "internal error, see the API's log"}))
            return
        await _send(send, status, body, headers)


PRINCIPAL = "eventide.principal"
"""ASGI scope key of the :class:`~streams.httpaccess.Principal` a request is served for."""


async def _refuse(send: Any, refusal: Refusal) -> None:
    await _send(send, refusal.status, refusal.body(), dict(refusal.headers))


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
    keys: KeyStore | None = None,
) -> CommandApi:
    """The ASGI app; opens the store and (per EVENTIDE_API_RELAY) runs a relay.

    Raises :class:`~streams.exceptions.SettingsError` on an HTTP token
    misconfiguration (streams/httpaccess.py), before anything is opened.
    ``keys``: customers' data keys (default, with EVENTIDE_PII_ENCRYPTION: the
    keys topic); personal fields are encrypted with them before they are stored.
    """
    access = AccessPolicy.from_settings(
        settings, "command API", settings.api_host, open_paths=DOC_PATHS
    )
    store = store if store is not None else store_for(settings)
    if keys is None and settings.pii_encryption:
        keys = KafkaKeyStore(settings)
    registry = registry if registry is not None else new_registry()
    metrics = ApiMetrics(registry)
    relay = (
        OutboxRelay(settings, store, metrics=RelayMetrics(registry)) if settings.api_relay else None
    )
    service = CommandService(settings, store, relay.wake if relay else None, keys)
    processor = CommandProcessor(service, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        if keys is not None:
            await keys.start()
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
            if keys is not None:
                await keys.stop()
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
    app.access = access
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
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > access.max_body_bytes:
                refusal = access.body_refusal()
                return Response(refusal.body(), refusal.status, media_type="application/json")
        status, body, headers = await processor.answer(
            route,
            request.url.path,
            order_id,
            raw,
            request.headers.get("Idempotency-Key"),
            request.headers.get("X-Correlation-Id"),
            request.headers.get("Content-Type"),
            request.scope.get(PRINCIPAL, ANONYMOUS),
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
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a write token"}
            }
            schema["security"] = [{"bearer": []}]
            components = schema["components"].setdefault("schemas", {})
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

    asyncapi: dict[str, Any] = {}

    @app.get(
        "/asyncapi.json",
        summary="AsyncAPI 3.0 document of the topics and events (eventide asyncapi)",
    )
    async def asyncapi_document() -> dict[str, Any]:
        if not asyncapi:
            asyncapi.update(asyncapi_for(settings))
        return asyncapi

    @app.get("/health", summary="200 when the database answers")
    async def health() -> dict[str, Any]:
        counts = await store.outbox_counts()
        return {"status": "ready", "database": store.kind, "outbox": counts}

    return app


def run_api(settings: Settings) -> None:
    """``eventide api``: serve the command API until SIGINT/SIGTERM."""
    import uvicorn

    from .httpserver import bounded_protocol

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
    # uvicorn's httptools protocol buffers request heads of any size: bound them.
    config.http = bounded_protocol(settings.http_max_header_bytes)
    uvicorn.Server(config).run()

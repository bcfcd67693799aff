"""The command API: an ASGI app (FastAPI) with its OpenAPI description at /docs.

Every accepted command answers 201 with the event id and correlation id; a
retried POST with the same ``Idempotency-Key`` gets the first answer again
(header ``Idempotent-Replayed: true``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from streams.settings import Settings

from . import aggregate
from .aggregate import CommandMeta
from .exceptions import ApiError, InvalidCommandError
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


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "errors": errors}, status_code=422)


def create_api(settings: Settings, store: OutboxStore | None = None) -> FastAPI:
    """The ASGI app; opens the store and (per EVENTIDE_API_RELAY) runs a relay."""
    store = store if store is not None else store_for(settings)
    relay = OutboxRelay(settings, store) if settings.api_relay else None
    service = CommandService(settings, store, relay.wake if relay else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
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

    app = FastAPI(
        title="Eventide command API",
        version="1.0.0",
        description="Commands become events through a transactional outbox (see DESIGN.md).",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.relay = relay

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                error = e.get("ctx", {}).get("error", "")
                errors.append({"field": "body", "reason": f"not valid JSON: {error}"})
            else:
                errors.append({"field": _field(e.get("loc", ())), "reason": e.get("msg", "")})
        return _invalid(errors)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        if isinstance(exc, InvalidCommandError):
            return _invalid([{"field": exc.field, "reason": exc.reason}])
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    def header(request: Request, name: str) -> str | None:
        value = request.headers.get(name)
        if value is not None and not HEADER_RE.match(value):
            raise InvalidCommandError(
                f"header {name}", "1-100 letters, digits and ._:- expected", value
            )
        return value

    async def run(
        request: Request, kind: str, id_field: str, model: type[BaseModel], decider: Decider
    ) -> Response:
        # Validation by the pydantic model straight from the bytes: FastAPI's
        # parameter machinery costs more than the whole command otherwise.
        try:
            body = model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        data = body.model_dump()
        if "order_id" in request.path_params:
            data = {id_field: request.path_params["order_id"], **data}
        elif not data[id_field]:
            data[id_field] = f"{kind[0]}-{uuid.uuid4().hex}"
        idem = None
        idempotency_key = header(request, "Idempotency-Key")
        if idempotency_key is not None:
            canonical = orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
            idem = IdempotencyKey(idempotency_key, fingerprint("POST", request.url.path, canonical))
        meta = CommandMeta(correlation_id=header(request, "X-Correlation-Id"))
        outcome = await service.handle(kind, data[id_field], decider, data, meta, idem)
        headers = {"X-Correlation-Id": outcome.body["correlationId"]}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            orjson.dumps(outcome.body),
            status_code=outcome.status,
            media_type="application/json",
            headers=headers,
        )

    def command(
        path: str, model: type[BaseModel], kind: str, id_field: str, decider: Decider, summary: str
    ) -> None:
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

            async def on_order(request: Request, order_id: str) -> Response:
                return await run(request, kind, id_field, model, decider)

            app.post(path, **options)(on_order)
        else:

            async def on_new(request: Request) -> Response:
                return await run(request, kind, id_field, model, decider)

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
    )
    uvicorn.Server(config).run()

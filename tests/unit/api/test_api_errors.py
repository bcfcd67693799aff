"""Errors carry no HTTP status: the API maps their classes to statuses at its edge."""

from __future__ import annotations

import httpx
import pytest

from api import exceptions
from api.app import STATUS, create_api, http_status
from api.exceptions import (
    ApiError,
    ConcurrencyError,
    ConflictError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    NotFoundError,
    StoreError,
)
from streams.settings import Settings
from tests.fixtures.keys import memory_keys


def test_no_error_class_carries_a_status():
    classes = [c for c in vars(exceptions).values() if isinstance(c, type)]
    errors = [c for c in classes if issubclass(c, ApiError)]
    assert {ApiError, StoreError, ConcurrencyError} <= set(errors)
    assert [c.__name__ for c in errors if hasattr(c, "status")] == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFoundError("order 'o' not found"), 404),
        (ConflictError("order 'o' is shipped"), 409),
        (InvalidCommandError("amount", "must equal the order total 1.0"), 422),
        (IdempotencyKeyReusedError("Idempotency-Key 'k' was first used..."), 422),
        (StoreError("PostgreSQL down"), 503),
        (ConcurrencyError("order:o: another command committed first"), 503),
        (ApiError("something unforeseen"), 500),
    ],
)
def test_each_error_class_maps_to_its_status(error, status):
    assert http_status(error) == status


def test_a_subclass_is_mapped_before_its_base():
    for n, (cls, _) in enumerate(STATUS):
        assert not any(issubclass(later, cls) for later, _ in STATUS[n + 1 :] if later is not cls)


async def test_a_database_that_cannot_be_used_is_503_and_retriable(tmp_path):
    env = {"EVENTIDE_STATE_DIR": str(tmp_path), "EVENTIDE_API_RELAY": "false"}
    app = create_api(Settings.from_env(env), keys=memory_keys())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        await app.state.store.close()  # as if the database had gone away
        r = await client.post("/users", json={"email": "a@b.co", "name": "Ann"})
    assert r.status_code == 503
    assert r.json() == {"error": f"{app.state.store!r} is not open"}
    assert StoreError.retriable and not ConflictError.retriable

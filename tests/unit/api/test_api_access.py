"""The command API's HTTP edge without a server: tokens and roles, limits, media
type, duplicate keys, control characters and the audit line (issue #13, parts 4-5).

The real server's head limit (uvicorn + httptools) is tested in
tests/integration/api/test_api_access.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from api.app import create_api
from streams.exceptions import SettingsError
from streams.httpaccess import AUDIT_LOGGER, AccessPolicy, RateLimiter, token_hash
from streams.settings import Settings
from tests.fixtures.keys import memory_keys

TOKENS = {"reader": "r-token-1", "writer": "w-token-1", "ops": "a-token-1"}
ENTRIES = ",".join(
    f"{name}:{role}:{token_hash(TOKENS[name])}"
    for name, role in (("reader", "read"), ("writer", "write"), ("ops", "admin"))
)
USER = {"email": "canary-7f3a@example.com", "name": "Ada Canary"}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture
def make_client(tmp_path) -> Callable[..., AsyncIterator[httpx.AsyncClient]]:
    def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings.from_env(
            {
                "EVENTIDE_STATE_DIR": str(tmp_path),
                "EVENTIDE_API_RELAY": "false",
                "EVENTIDE_HTTP_TOKENS": ENTRIES,
                **env,
            }
        )
        return _client(settings)

    return make


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(settings, keys=memory_keys())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        yield c


@pytest.fixture
async def client(make_client) -> AsyncIterator[httpx.AsyncClient]:
    async for c in make_client():
        yield c


async def test_tokens_and_roles(client):
    no_token = await client.post("/users", json=USER)
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert "needs a bearer token" in no_token.json()["error"]
    bad = await client.post("/users", json=USER, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "unknown or malformed" in bad.json()["error"]
    read = await client.post("/users", json=USER, headers=auth("reader"))
    assert read.status_code == 403
    assert read.json()["error"] == "principal 'reader' has the read role; POST /users needs write"
    assert (await client.post("/users", json=USER, headers=auth("writer"))).status_code == 201
    assert (await client.post("/users", json=USER, headers=auth("ops"))).status_code == 201
    # Probes and the API's description are open; everything else needs a token.
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/nowhere")).status_code == 401
    assert (await client.get("/nowhere", headers=auth("reader"))).status_code == 404


async def test_probes_can_be_closed(make_client):
    async for c in make_client(EVENTIDE_HTTP_OPEN_PROBES="false"):
        assert (await c.get("/health")).status_code == 401
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=auth("reader"))).status_code == 200


async def test_an_accepted_command_writes_one_audit_line_without_personal_data(client, caplog):
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        r = await client.post(
            "/users", json=USER, headers={**auth("writer"), "X-Correlation-Id": "corr-audit-1"}
        )
        refused = await client.post("/users", json={**USER, "email": "x"}, headers=auth("writer"))
    assert r.status_code == 201 and refused.status_code == 422
    lines = [rec.getMessage() for rec in caplog.records if rec.name == AUDIT_LOGGER]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line == {
        "audit": "command",
        "principal": "writer",
        "correlationId": "corr-audit-1",
        "command": "create_user",
        "status": 201,
        "eventId": r.json()["eventId"],
    }
    for personal in (USER["email"], USER["name"], "canary", "Ada"):
        assert personal not in lines[0]


async def test_body_size_and_media_type(make_client):
    async for c in make_client(EVENTIDE_HTTP_MAX_BODY_BYTES="1024"):
        big = {**USER, "name": "x" * 2000}
        r = await c.post("/users", json=big, headers=auth("writer"))
        assert r.status_code == 413
        assert "EVENTIDE_HTTP_MAX_BODY_BYTES" in r.json()["error"]
        body = json.dumps(USER).encode()
        for headers in ({"Content-Type": "text/plain"}, {}, {"Content-Type": "application/xml"}):
            r = await c.post("/users", content=body, headers={**auth("writer"), **headers})
            assert r.status_code == 415, headers
            assert "Content-Type: application/json" in r.json()["error"]
        utf8 = {"Content-Type": "application/json; charset=UTF-8", **auth("writer")}
        assert (await c.post("/users", content=body, headers=utf8)).status_code == 201


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/users", b'{"email": "a@b.co", "name": "Ann", "email": "c@d.co"}', "email"),
        (
            "/orders",
            b'{"customerId": "c-1", "items": [{"sku": "s", "quantity": 1, "unitPrice": 1,'
            b' "quantity": 9}]}',
            "items[0].quantity",
        ),
    ],
)
async def test_duplicate_json_keys_are_refused_naming_the_key(client, path, raw, field):
    headers = {"Content-Type": "application/json", **auth("writer")}
    r = await client.post(path, content=raw, headers=headers)
    assert r.status_code == 422
    [error] = r.json()["errors"]
    assert error["field"] == field
    assert f"duplicate key {field.rsplit('.', 1)[-1]!r}" in error["reason"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/users", {"email": "a\u0000@b.co", "name": "Ann"}, "email"),
        ("/users", {"email": "a@b.co", "name": "x\u0000y"}, "name"),
        ("/users", {"email": "a@b.co", "name": "x\u001by"}, "name"),
        ("/orders/o-1/cancel", {"reason": "la\u0085te"}, "reason"),
    ],
)
async def test_control_characters_are_refused_naming_the_field(client, path, body, field):
    r = await client.post(path, json=body, headers=auth("writer"))
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"] == field and "control character U+" in e["reason"] for e in errors)


async def test_rate_limit_per_client_answers_429_with_retry_after(make_client):
    env = {"EVENTIDE_HTTP_RATE_LIMIT": "0.5", "EVENTIDE_HTTP_RATE_BURST": "2"}
    async for c in make_client(**env):
        codes = [(await c.get("/health", headers=auth("reader"))).status_code for _ in range(2)]
        limited = await c.get("/health", headers=auth("reader"))
        assert codes == [200, 200] and limited.status_code == 429
        assert limited.headers["Retry-After"] == "2"
        assert "rate limit exceeded" in limited.json()["error"]
        # Another principal has its own bucket; requests without a token share their address's.
        assert (await c.get("/health", headers=auth("writer"))).status_code == 200


async def test_oversized_headers_are_431(client):
    r = await client.get("/health", headers={"X-Big": "a" * 20_000})
    assert r.status_code == 431
    assert "EVENTIDE_HTTP_MAX_HEADER_BYTES" in r.json()["error"]


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=1, clock=lambda: now[0], max_clients=2)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    for c in ("b", "c", "d"):  # beyond max_clients, idle buckets are dropped
        limiter.acquire(c)
    assert len(limiter._buckets) <= 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EVENTIDE_HTTP_TOKENS": f"ops:root:{token_hash('t')}"},
            "EVENTIDE_HTTP_TOKENS: entry 1 (ops:root:…): role 'root' is not one of read, "
            "write, admin",
        ),
        (
            {"EVENTIDE_HTTP_TOKENS": "ops:admin:my-secret-token"},
            "EVENTIDE_HTTP_TOKENS: entry 1 (ops:admin:…): the hash must be the 64 hex digits",
        ),
    ],
)
def test_malformed_token_entries_fail_naming_the_setting(env, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(message)
    assert "my-secret-token" not in str(info.value)


def test_token_misconfiguration_fails_at_start_up(tmp_path):
    base = {"EVENTIDE_STATE_DIR": str(tmp_path)}
    missing = tmp_path / "no-such-tokens"
    with pytest.raises(SettingsError, match=r"EVENTIDE_HTTP_TOKENS_FILE=.*cannot read the token"):
        create_api(Settings.from_env({**base, "EVENTIDE_HTTP_TOKENS_FILE": str(missing)}))
    bad = tmp_path / "tokens"
    bad.write_text(f"# ops team\nops:admin:{token_hash('a')}\nci:superuser:{token_hash('b')}\n")
    with pytest.raises(SettingsError, match=r"TOKENS_FILE=.*entry 2 \(ci:superuser:…\): role"):
        create_api(Settings.from_env({**base, "EVENTIDE_HTTP_TOKENS_FILE": str(bad)}))
    with pytest.raises(SettingsError, match="EVENTIDE_HTTP_AUTH=on but no tokens"):
        create_api(Settings.from_env({**base, "EVENTIDE_HTTP_AUTH": "on"}))
    with pytest.raises(SettingsError, match=r"listen on 0\.0\.0\.0 without authentication"):
        create_api(Settings.from_env({**base, "EVENTIDE_API_HOST": "0.0.0.0"}))


def test_without_tokens_on_loopback_authentication_is_off_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="streams.httpaccess"):
        policy = AccessPolicy.from_settings(Settings.from_env({}), "worker", "127.0.0.1")
    assert not policy.enabled
    assert "HTTP AUTHENTICATION IS OFF on the worker" in caplog.text
    assert policy.authorize("POST", "/admin/rebuild/orders", None, "127.0.0.1").name == "anonymous"

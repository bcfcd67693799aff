"""Eventide against the secured (SASL_SSL, SCRAM, deny-by-default ACLs) dev broker.

The worker (on both engine clients), the relay and CLI commands each connect
with their own principal and carry an event end to end; a wrong password, an
untrusted CA and a principal outside its ACLs fail within 10 s with a message
naming the cause and the setting; passwords stay out of logs and metrics.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from eventide.tools.demo import fetch_json
from eventide.tools.devsecurity import make_ca
from schemas.envelope import new_event
from streams.catalogue import ORDER_EVENTS
from streams.exceptions import KafkaAuthorizationError, KafkaSecurityError
from streams.kafka_clients import check_confluent
from streams.produce import EventPublisher
from streams.settings import Settings
from tests.fixtures.broker import free_port
from tests.integration.api.conftest import Process

pytestmark = pytest.mark.integration

FAIL_WITHIN_S = 10.0


def cli(settings: Settings, *args: str, timeout: float = 120) -> tuple[int, str, float]:
    """Run ``eventide ARGS`` with ``settings``; (exit code, stdout + stderr, seconds)."""
    env = {**os.environ, **settings.to_env()}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "eventide.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def wait_for_order(worker_url: str, order_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    code, body = 0, None
    while time.monotonic() < deadline:
        code, body = fetch_json(f"{worker_url}/orders/{order_id}")
        if code == 200:
            return dict(body)
        time.sleep(0.3)
    pytest.fail(f"order {order_id} not in the read model after {timeout:.0f}s: {code} {body}")


def passwords(secure_kafka: Any) -> list[str]:
    return [secure_kafka.secrets.password(role) for role in ("admin", "worker", "relay")]


@pytest.mark.parametrize("client", ["aiokafka", "confluent"])
def test_worker_relay_and_cli_with_their_principals(
    client: str,
    make_secure_settings: Callable[..., Settings],
    secure_kafka: Any,
    worker_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:10]
    admin = make_secure_settings("admin", tag)
    worker_settings = make_secure_settings("worker", tag, EVENTIDE_KAFKA_CLIENT=client)
    relay = make_secure_settings(
        "relay", tag, EVENTIDE_API_PORT=str(free_port()), EVENTIDE_API_RELAY="true"
    )

    code, out, _ = cli(admin, "topics")  # the admin creates the topics
    assert code == 0, out
    worker = worker_factory(worker_settings).start()
    api = Process("api", relay, tmp_path / "api.log").start()  # the relay runs inside

    order_id = f"sec-{tag}"
    body = {"orderId": order_id, "customerId": "c-1",
            "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}]}  # fmt: skip
    r = httpx.post(f"{api.url}/orders", json=body, timeout=30)
    assert r.status_code == 201, r.text
    view = wait_for_order(worker_settings.web_url, order_id)
    assert view["status"] == "pending" and view["totalAmount"] == 16.0

    # Personal data: the API (relay's principal) writes the customer's data key to
    # the keys topic and encrypts; the worker reads the key to show the e-mail.
    user = {"userId": f"u-{tag}", "email": f"sec-{tag}@example.com", "name": "Sec User"}
    r = httpx.post(f"{api.url}/users", json=user, timeout=30)
    assert r.status_code == 201, r.text
    deadline, customer = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        code, customer = fetch_json(f"{worker_settings.web_url}/customers/u-{tag}")
        if code == 200 and customer.get("email") == user["email"]:
            break
        time.sleep(0.3)
    assert customer is not None and customer.get("email") == user["email"], customer

    code, out, _ = cli(admin, "history", order_id)  # a CLI command as the admin
    assert code == 0 and "order.placed" in out, out
    if client == "confluent":
        code, out, _ = cli(admin, "demo", "--orders", "5", "--show", "1", "--timeout", "90")
        assert code == 0, out

    metrics = httpx.get(f"{worker_settings.web_url}/metrics", timeout=10).text
    worker.stop()
    api.stop()
    logs = {"worker": worker.output(), "api": api.output(), "metrics": metrics}
    for where, text in logs.items():
        for secret in passwords(secure_kafka):
            assert secret not in text, f"a password appears in the {where} output"


def test_a_wrong_password_fails_at_start_up_naming_the_user(
    make_secure_settings: Callable[..., Settings],
) -> None:
    settings = make_secure_settings(
        "worker", EVENTIDE_KAFKA_PASSWORD_FILE="", EVENTIDE_KAFKA_PASSWORD="not-the-password"
    )
    code, out, took = cli(settings, "topics")
    assert code == 2 and took < FAIL_WITHIN_S, (code, took, out)
    assert "refused the credentials of EVENTIDE_KAFKA_USERNAME='worker'" in out, out
    assert "EVENTIDE_KAFKA_PASSWORD" in out and "invalid credentials" in out, out
    assert "not-the-password" not in out


def test_a_wrong_password_fails_fast_on_librdkafka_too(
    make_secure_settings: Callable[..., Settings],
) -> None:
    settings = make_secure_settings(
        "worker", EVENTIDE_KAFKA_PASSWORD_FILE="", EVENTIDE_KAFKA_PASSWORD="not-the-password"
    )
    started = time.monotonic()
    with pytest.raises(KafkaSecurityError) as refused:
        asyncio.run(check_confluent(settings))
    assert time.monotonic() - started < FAIL_WITHIN_S
    assert "_AUTHENTICATION" in str(refused.value) and "EVENTIDE_KAFKA_USERNAME=worker" in str(
        refused.value
    )


def test_an_untrusted_ca_fails_at_start_up_naming_the_ca_file(
    make_secure_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    other_ca, _ = make_ca("Some other CA")
    ca_file = tmp_path / "other-ca.pem"
    ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    settings = make_secure_settings("worker", EVENTIDE_KAFKA_CA_FILE=str(ca_file))
    code, out, took = cli(settings, "topics")
    assert code == 2 and took < FAIL_WITHIN_S, (code, took, out)
    assert "is not trusted" in out and f"EVENTIDE_KAFKA_CA_FILE={ca_file}" in out, out
    assert "certificate verify failed" in out or "self-signed" in out or "issuer" in out, out


def test_the_relay_cannot_write_outside_its_topics(
    make_secure_settings: Callable[..., Settings],
) -> None:
    # The relay's ACLs cover the topics starting with sec-; "nope-" is outside them.
    tag = uuid.uuid4().hex[:10]
    settings = make_secure_settings(
        "relay", tag, EVENTIDE_TOPIC_PREFIX=f"nope-{tag}-", EVENTIDE_RELAY_METRICS_PORT="0"
    )
    code, out, took = cli(settings, "relay")
    assert code == 2 and took < FAIL_WITHIN_S, (code, took, out)
    assert "refused User:relay (EVENTIDE_KAFKA_USERNAME)" in out, out
    assert f"nope-{tag}-order-events" in out and "TOPIC_AUTHORIZATION_FAILED" in out, out
    assert "EVENTIDE_TOPIC_PREFIX" in out


def test_a_publisher_writing_outside_its_acl_gets_a_clear_error(
    make_secure_settings: Callable[..., Settings],
) -> None:
    settings = make_secure_settings("relay")
    event = new_event("order.cancelled", {"orderId": "o-1", "reason": "test"}, source="test")

    async def publish() -> None:
        async with EventPublisher(settings) as publisher:
            await publisher.publish(f"outside-{uuid.uuid4().hex[:6]}-{ORDER_EVENTS.name}", [event])

    started = time.monotonic()
    with pytest.raises(KafkaAuthorizationError) as denied:
        asyncio.run(publish())
    assert time.monotonic() - started < FAIL_WITHIN_S
    assert "User:relay" in str(denied.value) and "TOPIC_AUTHORIZATION_FAILED" in str(denied.value)


def test_a_worker_outside_its_groups_fails_at_start_up(
    make_secure_settings: Callable[..., Settings],
) -> None:
    # The worker may use groups starting with "sec"; this app id is another.
    settings = make_secure_settings("worker", EVENTIDE_APP_ID=f"nope-{uuid.uuid4().hex[:6]}")
    code, out, took = cli(settings, "worker")
    assert code == 2 and took < FAIL_WITHIN_S, (code, took, out)
    assert "GROUP_AUTHORIZATION_FAILED" in out and "EVENTIDE_APP_ID" in out, out
    assert "User:worker" in out

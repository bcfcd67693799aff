"""The AsyncAPI 3.0 document (streams/asyncapi.py), its command and its HTTP route.

The document is validated against the AsyncAPI initiative's own JSON Schema of
3.0.0 (tests/fixtures/asyncapi_spec.py); a broken copy must fail it, so the
check is known to look inside channels, bindings and payloads.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from api.app import create_api
from eventide.cli import main
from schemas.registry import Registry
from streams.asyncapi import document
from streams.settings import Settings
from tests.fixtures.asyncapi_spec import asyncapi_3_schema
from tests.fixtures.keys import memory_keys

SETTINGS = Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "shop-", "EVENTIDE_PARTITIONS": "12"})


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    spec = asyncapi_3_schema()
    return jsonschema.validators.validator_for(spec)(spec)


def _problems(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_the_document_is_valid_asyncapi_3(validator):
    doc = document(SETTINGS)
    assert doc["asyncapi"] == "3.0.0"
    assert _problems(validator, doc) == []


def test_the_validation_is_live(validator):
    doc = document(SETTINGS)
    for break_it in (
        lambda d: d["operations"]["projectOrderEvents"].update(action="subscribe"),
        lambda d: d["channels"]["orderEvents"]["bindings"]["kafka"].update(partitions="12"),
        lambda d: d["components"]["messages"]["order.placed-1.0"]["payload"].update(type="obj"),
    ):
        broken = copy.deepcopy(doc)
        break_it(broken)
        assert _problems(validator, broken), "a broken document passed"


def test_channels_are_the_topics_with_their_failure_topics_and_layout():
    channels = document(SETTINGS)["channels"]
    orders = channels["orderEvents"]
    assert orders["address"] == "shop-order-events"
    assert orders["bindings"]["kafka"]["partitions"] == 12
    assert orders["bindings"]["kafka"]["topicConfiguration"]["retention.ms"] == -1
    assert channels["orderEventsRetry"]["address"] == "shop-order-events.retry"
    assert channels["orderEventsDlq"]["address"] == "shop-order-events.dlq"
    assert channels["orderViews"]["bindings"]["kafka"]["topicConfiguration"] == {
        "cleanup.policy": ["compact"]
    }
    order_events = {e.name for e in Registry.load() if e.name.startswith("order.")}
    assert {m.rsplit("-", 1)[0] for m in orders["messages"]} == order_events
    assert {m.rsplit("-", 1)[0] for m in channels["userEvents"]["messages"]} == {"user.created"}


def test_messages_carry_the_json_schema_and_the_avro_schema_id():
    registry = Registry.load()
    messages = document(SETTINGS, registry)["components"]["messages"]
    assert len(messages) == len(registry)
    placed = messages["order.placed-1.0"]
    assert placed["x-eventide-avro-schema-id"] == registry.get("order.placed", "1.0").id
    assert placed["payload"]["properties"]["name"] == {"const": "order.placed"}
    assert placed["bindings"]["kafka"]["key"]["description"] == "data.orderId"
    quantity = placed["payload"]["properties"]["data"]["properties"]["items"]["items"]
    assert quantity["properties"]["quantity"]["exclusiveMinimum"] == 0


def test_the_commands_write_the_document_and_the_schemas(tmp_path, monkeypatch):
    monkeypatch.setenv("EVENTIDE_TOPIC_PREFIX", "shop-")
    runner = CliRunner()
    printed = runner.invoke(main, ["asyncapi"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["channels"]["userEvents"]["address"] == "shop-user-events"
    exported = runner.invoke(main, ["schemas", "export", "--out", str(tmp_path / "js")])
    assert exported.exit_code == 0, exported.output
    files = sorted(p.name for p in (tmp_path / "js").iterdir())
    assert len(files) == len(Registry.load()) and "user.created-1.1.schema.json" in files
    one = json.loads((tmp_path / "js" / "order.placed-1.0.schema.json").read_text())
    assert one["$schema"] == "https://json-schema.org/draft/2020-12/schema"


async def test_the_command_api_serves_it_without_a_token(tmp_path):
    settings = Settings.from_env(
        {
            "EVENTIDE_STATE_DIR": str(tmp_path),
            "EVENTIDE_API_RELAY": "false",
            "EVENTIDE_HTTP_TOKENS": "ops:admin:" + "0" * 64,
            "EVENTIDE_TOPIC_PREFIX": "shop-",
            "EVENTIDE_PARTITIONS": "12",
        }
    )
    app = create_api(settings, keys=memory_keys())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        answer = await client.get("/asyncapi.json")
    assert answer.status_code == 200
    assert answer.json() == json.loads(json.dumps(document(SETTINGS)))


def test_every_registered_event_travels_on_exactly_one_topic():
    from streams.catalogue import CATALOGUE

    for entry in Registry.load():
        carriers = [s.name for s in CATALOGUE if s.carries(entry.name)]
        assert len(carriers) == 1, (entry.name, carriers)

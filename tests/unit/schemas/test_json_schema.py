"""The JSON Schema export (schemas/json_schema.py) against the decoder's own verdicts.

Each exported document must accept every event the test suite publishes (the
benchmark workload, the contract's valid controls, personal fields encrypted
as the command API writes them) and refuse the contract's hostile values,
exactly where the worker's decoder refuses them.
"""

from __future__ import annotations

from dataclasses import replace

import jsonschema
import orjson
import pytest

from benchmarks.workload import make_workload
from schemas.codecs import EventCodec
from schemas.exceptions import EventError
from schemas.json_schema import DIALECT, all_schemas, event_schema, file_name
from schemas.personal import DataKey
from schemas.registry import Registry
from streams.catalogue import key_of
from streams.keys import PersonalFields
from tests.fixtures.contract import hostile_cases, valid_cases

REGISTRY = Registry.load()
CODEC = EventCodec()


def _validator(name: str, version: str) -> jsonschema.protocols.Validator:
    major_minor = ".".join(version.split(".")[:2])
    schema = event_schema(REGISTRY.get(name, major_minor))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(doc: dict) -> list[str]:
    found = _validator(doc["name"], doc["version"]).iter_errors(doc)
    return [".".join(str(p) for p in e.absolute_path) for e in found]


def test_every_registered_event_has_a_valid_draft_2020_12_document():
    docs = all_schemas(REGISTRY)
    assert len(docs) == len(REGISTRY)
    for name, schema in docs.items():
        assert schema["$schema"] == DIALECT
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name.endswith(".schema.json")
    assert file_name(REGISTRY.get("order.placed", "1.0")) == "order.placed-1.0.schema.json"


def test_the_workload_events_are_accepted():
    work = make_workload(300, 50, seed=5)
    events = work.users + work.orders
    assert {e.name for e in events} >= {"user.created", "order.placed", "order.shipped"}
    for event in events:
        doc = orjson.loads(CODEC.encode_json(event))
        assert _errors(doc) == [], event.name


def test_personal_fields_are_accepted_encrypted_and_a_forged_ciphertext_is_not():
    work = make_workload(10, 5, seed=6)
    user = work.users[0]
    personal = PersonalFields(REGISTRY)
    key = DataKey.generate(key_of(user))
    sealed = replace(user, data=personal.encrypt(key, user.name, user.data))
    doc = orjson.loads(CODEC.encode_json(sealed))
    assert doc["data"]["email"].startswith("pii:v1:")
    assert _errors(doc) == []
    doc["data"]["email"] = "pii:v1:not-a-ciphertext"
    assert _errors(doc) == ["data.email"]


@pytest.mark.parametrize("case", valid_cases(), ids=lambda c: c.label)
def test_the_contracts_valid_controls_are_accepted(case):
    assert _errors(case.event.to_dict()) == []


@pytest.mark.parametrize("case", [c for c in hostile_cases() if not c.avro], ids=lambda c: c.label)
def test_a_hostile_value_is_refused_at_the_field_the_decoder_names(case):
    doc = case.event.to_dict()
    with pytest.raises(EventError) as refused:
        CODEC.decode(orjson.dumps(doc))
    assert case.field.split("[")[0] in str(refused.value)
    errors = _errors(doc)
    assert errors, f"{case.label}: the JSON Schema accepts what the decoder refuses"
    path = "data." + case.field.replace("[", ".").replace("]", "")
    assert any(path.startswith(e) or e.startswith(path) for e in errors), (case.label, errors)


def test_envelope_mistakes_are_refused():
    event = make_workload(1, 1, seed=7).orders[0]
    good = orjson.loads(CODEC.encode_json(event))
    assert _errors(good) == []
    for field, value in (
        ("name", "order.shipped"),
        ("version", "2.0.0"),
        ("timestamp", "yesterday"),
        ("id", ""),
        ("correlationId", 5),
    ):
        found = _validator("order.placed", "1.0.0").iter_errors({**good, field: value})
        assert [".".join(map(str, e.absolute_path)) for e in found] == [field], field
    missing = {k: v for k, v in good.items() if k != "source"}
    assert _validator("order.placed", "1.0.0").is_valid(missing) is False

"""Field constraints in the schemas (schemas/constraints.py): read with the
registry, left out of fingerprints, enforced on every decode and encode path."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace

import orjson
import pytest

from schemas import EventCodec, Limits, ValidationError, new_event
from schemas.constraints import FieldConstraints, cipher_length
from schemas.exceptions import RegistryError, SchemaError
from schemas.personal import DataKey
from schemas.registry import DEFAULT_ROOT, Registry, fingerprint
from tests.fixtures.contract import hostile_cases

REGISTRY = Registry.load()
CODEC = EventCodec(REGISTRY)
WALKED = EventCodec(REGISTRY, Limits(max_array_length=120))
"""Avro records over 120 bytes are walked by the full validator, not the small-record checks."""


def test_constraints_do_not_change_fingerprints():
    entry = REGISTRY.get("order.placed", "1.0")
    bare = json.loads(json.dumps(entry.wire).replace('"constraints"', '"doc"'))
    assert fingerprint(entry.wire) == fingerprint(bare) == entry.fingerprint


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (
            {"name": "n", "type": "int", "constraints": {"maxLength": 3}},
            "does not apply to a number",
        ),
        ({"name": "n", "type": "string", "constraints": {"pattern": "[a-z]+"}}, "written ^...$"),
        (
            {"name": "n", "type": "string", "constraints": {"pattern": "^(a$"}},
            "not a valid regular",
        ),
        ({"name": "n", "type": "string", "constraints": {"format": "uri"}}, "one of email"),
        ({"name": "n", "type": "double", "constraints": {"minimum": "0"}}, "finite number"),
        ({"name": "n", "type": "boolean", "constraints": {"minimum": 0}}, "not to 'boolean'"),
        ({"name": "n", "type": "string", "constraints": {"noControl": False}}, "must be true"),
    ],
)
def test_malformed_constraints_are_refused_naming_the_field(field, message):
    with pytest.raises(SchemaError, match=re.escape(message)) as info:
        FieldConstraints.of(field, "r")
    assert "field 'n'" in str(info.value)


def test_the_registry_refuses_a_schema_with_a_malformed_constraint(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(DEFAULT_ROOT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = root / "avsc" / "order.placed" / "1.0.avsc"
    schema = json.loads(path.read_text())
    schema["fields"][0]["constraints"] = {"minimum": 0}
    path.write_text(json.dumps(schema))
    with pytest.raises(RegistryError, match=r"orderId.*does not apply to a string"):
        Registry.load(root)


def _as_avro(case) -> bytes:
    return replace(case, avro=True).record()[1]


@pytest.mark.parametrize("case", hostile_cases(), ids=lambda c: c.label)
@pytest.mark.parametrize("codec", [CODEC, WALKED], ids=["small-record checks", "full validator"])
def test_avro_records_are_held_to_the_constraints(case, codec):
    with pytest.raises(ValidationError) as info:
        codec.decode(_as_avro(case))
    assert info.value.path == case.event_path


@pytest.mark.parametrize("case", [c for c in hostile_cases() if not c.avro], ids=lambda c: c.label)
def test_encoding_refuses_what_the_contract_refuses(case):
    with pytest.raises(ValidationError) as info:
        CODEC.encode_json(case.event)
    assert info.value.path == case.event_path


def user(**data):
    base = {"userId": "u-1", "email": "ann@example.com", "name": "Ann"}
    return new_event("user.created", {**base, **data}, version="1.1.0")


def test_personal_fields_accept_their_ciphertext_and_check_their_plaintext():
    key = DataKey.generate("u-1")
    longest = "é" * 200
    sealed = {f: key.encrypt(f, v) for f, v in (("email", "ann@example.com"), ("name", longest))}
    event = user(**sealed, address=key.encrypt("address", "1 Main Street"))
    for raw in (CODEC.encode_json(event), CODEC.encode_avro(event)):
        assert CODEC.decode(raw) == event
    assert len(sealed["name"]) <= cipher_length(200)
    # Plaintext from an older producer is held to every rule, and never shown.
    with pytest.raises(ValidationError) as info:
        CODEC.decode(orjson.dumps(user(email="ann\x00@example.com").to_dict()))
    assert str(info.value) == (
        "data.email: expected text without control characters (noControl), found U+0000 at "
        "position 3, got a personal value of 16 characters (not shown)"
    )
    # A malformed or over-long ciphertext is refused.
    for bad in ("pii:v1:zz", sealed["name"] + "A" * 1200):
        doc = user(name=bad).to_dict()
        with pytest.raises(ValidationError, match=r"data.name: expected an encrypted value pii:v1"):
            CODEC.decode(orjson.dumps(doc))


def test_messages_name_the_rule_and_the_value():
    doc = orjson.loads(CODEC.encode_json(user()))
    cases = {
        "x\x1by": r"data.name: expected text without control characters \(noControl\), found "
        r"U\+001B at position 1, got a personal value",
    }
    for name, message in cases.items():
        with pytest.raises(ValidationError, match=message):
            CODEC.decode(orjson.dumps({**doc, "data": {**doc["data"], "name": name}}))
    placed = {
        "orderId": "o-1",
        "customerId": "c-1",
        "items": [{"sku": "s-1", "quantity": -5, "unitPrice": 1.0}],
        "totalAmount": -12.5,
    }
    with pytest.raises(ValidationError) as info:
        CODEC.encode_json(new_event("order.placed", copy.deepcopy(placed)))
    assert str(info.value) == (
        "data.items[0].quantity: expected a number > 0 (exclusiveMinimum), got -5"
    )

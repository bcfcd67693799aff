"""One contract on both paths (issue #13, part 5), without a broker: the command
API's models and the registry's constraints agree field by field, and every
hostile value gets the same verdict from the API and from the worker's decoder.

The same table runs against the real broker in tests/integration/test_contract.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import AfterValidator

from api.models import CONTRACT, FROM_THE_PATH, no_control_characters
from schemas import EventCodec, ValidationError
from schemas.constraints import FORMATS, payload_constraints
from schemas.registry import Registry
from tests.fixtures.contract import Case, api_verdicts, hostile_cases, valid_cases

REGISTRY = Registry.load()
CODEC = EventCodec(REGISTRY)
API_EVENTS = sorted({event for event, _ in CONTRACT.values()})
JSON_SCHEMA_KEYS = (
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "maxItems",
)


def _property(model: Any, name: str) -> dict[str, Any]:
    """The JSON Schema of a model's field, the null branch of an optional one left out."""
    prop = model.model_json_schema()["properties"][name]
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    assert len(branches) == 1, prop
    return {**prop, **branches[0]}


def test_every_constrained_field_of_the_commands_events_has_a_command_field():
    """No constraint of an event the API writes is left out of its models."""
    covered = set(CONTRACT.values()) | FROM_THE_PATH
    for event in API_EVENTS:
        for entry in REGISTRY.versions(event):
            for path in payload_constraints(entry.payload):
                assert (event, path) in covered, f"{event} {entry.version}: {path}"


@pytest.mark.parametrize(
    ("model", "name", "event", "path"),
    [(m, n, e, p) for (m, n), (e, p) in CONTRACT.items()],
    ids=[f"{m.__name__}.{n}" for m, n in CONTRACT],
)
def test_the_command_field_has_the_rules_of_the_event_field(model, name, event, path):
    spec = payload_constraints(REGISTRY.latest(event).payload)[path].spec
    prop = _property(model, name)
    expected = {**spec, "pattern": spec.get("pattern") or FORMATS.get(spec.get("format", ""))}
    for key in JSON_SCHEMA_KEYS:
        assert prop.get(key) == expected.get(key), f"{key} of {model.__name__}.{name}"
    checks_control = any(
        isinstance(m, AfterValidator) and m.func is no_control_characters
        for m in _metadata(model, name)
    )
    assert checks_control == bool(spec.get("noControl")), f"noControl of {model.__name__}.{name}"


def _metadata(model: Any, name: str) -> list[Any]:
    info = model.model_fields[name]
    found = list(info.metadata)
    for arg in getattr(info.annotation, "__args__", ()):  # Annotated inside an Optional
        found += list(getattr(arg, "__metadata__", ()))
    return found


def decoder_verdict(case: Case) -> str | None:
    """The field the worker's decoder names, under ``data.``, or None when it decodes."""
    _, value, headers = case.record()
    try:
        event = CODEC.decode(value, headers)
    except ValidationError as exc:
        return exc.path.removeprefix("data.")
    assert event.data is not None
    return None


@pytest.mark.parametrize("case", hostile_cases() + valid_cases(), ids=lambda c: c.label)
def test_the_api_and_the_decoder_give_the_same_verdict(case):
    expected = case.field or None
    assert decoder_verdict(case) == expected


async def test_the_api_refuses_every_hostile_value_naming_the_field(tmp_path):
    cases = hostile_cases() + valid_cases()
    verdicts = await api_verdicts(str(tmp_path), cases)
    assert verdicts == {c.label: c.field or None for c in cases}

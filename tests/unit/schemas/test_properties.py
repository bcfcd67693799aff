"""Property-based tests: every valid event round-trips; no input crashes the decoder."""

from datetime import UTC

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Envelope, EventCodec, EventError, Registry
from schemas.limits import json_depth

from .registries import avro_values

REGISTRY = Registry.load()
CODEC = EventCodec(REGISTRY)
NEWEST = [REGISTRY.latest(name) for name in REGISTRY.names]
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

PRIMITIVES = {
    "string": st.text(max_size=20),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "null": st.none(),
}


def values(schema):
    """A strategy of valid values of an Avro schema (the subset the registry admits)."""
    return avro_values(schema, PRIMITIVES, max_array=4)


optional_id = st.none() | st.uuids().map(str)
timestamps = st.datetimes(timezones=st.just(UTC)).map(
    lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
)


@st.composite
def events(draw):
    entry = draw(st.sampled_from(NEWEST))
    return Envelope(
        id=draw(st.uuids().map(str)),
        name=entry.name,
        timestamp=draw(timestamps),
        version=f"{entry.version}.{draw(st.integers(0, 9))}",
        source=draw(st.text(min_size=1, max_size=20)),
        correlation_id=draw(optional_id),
        causation_id=draw(optional_id),
        data=draw(values(entry.payload)),
    )


@PROPERTY
@given(events())
def test_valid_events_round_trip_through_avro_unchanged(event):
    raw = CODEC.encode_avro(event)
    assert CODEC.decode(raw) == event
    assert CODEC.decode(raw, [("content-type", b"application/avro")]) == event


@PROPERTY
@given(events())
def test_valid_events_round_trip_through_json_unchanged(event):
    raw = CODEC.encode_json(event)
    assert CODEC.decode(raw) == event
    assert CODEC.decode(raw, [("content-type", b"application/json")]) == event


def _decode_or_reject(raw, headers=None):
    """Decoding either raises one of the project's own errors or yields a valid Envelope."""
    try:
        event = CODEC.decode(raw, headers)
    except EventError:
        return
    assert isinstance(event, Envelope)
    # Whatever is accepted is valid: it survives both forms unchanged.
    assert CODEC.decode(CODEC.encode_json(event)) == event
    assert CODEC.decode(CODEC.encode_avro(event)) == event


@st.composite
def mutated(draw):
    event = draw(events())
    raw = bytearray(draw(st.sampled_from([CODEC.encode_avro, CODEC.encode_json]))(event))
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:]
    return bytes(raw)


@PROPERTY
@given(mutated())
def test_mutated_records_only_raise_decode_errors(raw):
    _decode_or_reject(raw)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(raw):
    _decode_or_reject(raw)


@PROPERTY
@given(st.sampled_from([e.id for e in REGISTRY]), st.binary(max_size=300))
def test_random_avro_bodies_of_known_schema_ids_only_raise_decode_errors(schema_id, body):
    _decode_or_reject(b"\x00" + schema_id.to_bytes(4, "big") + body)


@PROPERTY
@given(
    st.binary(max_size=200), st.sampled_from([None, "application/json", "application/avro", "x/y"])
)
def test_any_content_type_only_raises_decode_errors(raw, content_type):
    _decode_or_reject(raw, [("content-type", content_type.encode())] if content_type else None)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


def _depth(value):
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(json_values)
def test_the_depth_scan_before_parsing_agrees_with_the_parsed_structure(value):
    assert json_depth(orjson.dumps(value)) == _depth(value)

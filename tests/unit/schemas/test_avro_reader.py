"""The compiled Avro decoder: the same values as fastavro, and no trust in hostile bytes."""

import io
import struct

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from schemas import DecodeError, EventCodec, Limits, new_event
from schemas.avro_reader import MalformedAvro, Unsupported, compile_reader, read_value
from schemas.read_plans import ReadPlans

from .registries import avro_values, make_registry, order_placed
from .test_properties import PROPERTY, REGISTRY

CODEC = EventCodec(REGISTRY)
ENTRIES = list(REGISTRY)

PRIMITIVES = {
    # Long enough strings for lengths of two varint bytes; every Unicode plane.
    "string": st.text(max_size=100),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32),
    "double": st.floats(),
    "boolean": st.booleans(),
    "null": st.none(),
}


def values(schema):
    """Valid values of an Avro schema (the subset the registry admits), NaN included."""
    return avro_values(schema, PRIMITIVES, max_array=5)


def fastavro_encode(schema, value):
    fo = io.BytesIO()
    schemaless_writer(fo, parse_schema(schema), value)
    return fo.getvalue()


def fastavro_decode(raw, writer, reader=None):
    fo = io.BytesIO(raw)
    value = schemaless_reader(fo, parse_schema(writer), reader and parse_schema(reader))
    assert fo.tell() == len(raw)
    return value


def same(a, b, ordered=True):
    """Equal, with the same types (and key order) all the way down; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        keys_match = list(a) == list(b) if ordered else a.keys() == b.keys()
        return keys_match and all(same(a[k], b[k], ordered) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, ordered) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


def decode(schema, raw, reader=None):
    value, end = read_value(compile_reader(schema, reader), raw, 0)
    assert end == len(raw), f"{len(raw) - end} bytes left"
    return value


@st.composite
def wire_records(draw):
    entry = draw(st.sampled_from(ENTRIES))
    return entry, draw(values(entry.wire))


@PROPERTY
@given(wire_records())
def test_valid_records_of_every_schema_decode_as_fastavro_decodes_them(case):
    entry, doc = case
    raw = fastavro_encode(entry.wire, doc)
    ours = decode(entry.wire, raw)
    assert same(ours, fastavro_decode(raw, entry.wire))
    assert same(ours, doc, ordered=False)  # and round-trips


@PROPERTY
@given(st.lists(st.text(max_size=70), max_size=8), st.integers(1, 3), st.booleans())
def test_arrays_in_blocks_with_negative_counts_decode_as_fastavro_decodes_them(
    strings, per_block, negative
):
    # Blocks of at most per_block items; negative counts are followed by the
    # block's size in bytes, as the Avro specification allows.
    raw = bytearray()
    for at in range(0, len(strings), per_block):
        chunk = strings[at : at + per_block]
        block = b"".join(fastavro_encode("string", v) for v in chunk)
        if negative:
            raw += varint(-len(chunk)) + varint(len(block))
        else:
            raw += varint(len(chunk))
        raw += block
    raw += b"\x00"
    assert decode(ARRAY, bytes(raw)) == fastavro_decode(bytes(raw), ARRAY) == strings


def test_the_registry_schemas_compile_without_falling_back():
    plans = ReadPlans(REGISTRY, Limits())
    for entry in REGISTRY:
        assert compile_reader(entry.wire) is not None
        plan = plans.for_avro(entry.id)[1]
        assert plan.read is not None, entry


# -- hostile bytes ---------------------------------------------------------------------------

RECORD = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
ARRAY = {"type": "array", "items": "string"}


def varint(n):
    return fastavro_encode("long", n)


@pytest.mark.parametrize(
    ("schema", "raw", "message"),
    [
        ("string", varint(2**62), "truncated"),
        ("string", varint(-5) + b"abc", "negative string length -5"),
        ("string", varint(3) + b"\xff\xfe\xfd", "not valid UTF-8"),
        (ARRAY, varint(2**62) + b"\x02a", "claims 4611686018427387904 items"),
        (ARRAY, varint(-(2**62)) + varint(10) + b"\x02a", "claims 4611686018427387904 items"),
        (ARRAY, varint(-(2**63)) + varint(10), "claims"),
        ({"type": "map", "values": "double"}, varint(3) + b"\x02a" + bytes(8), "claims 3 items"),
        ("long", b"\xff" * 10 + b"\x01", "longer than the 10 bytes"),
        ("long", b"\xff" * 9 + b"\x7f", "does not fit in a 64-bit long"),
        ("int", varint(2**31), "does not fit in 32 bits"),
        ("int", varint(-(2**31) - 1), "does not fit in 32 bits"),
        ("boolean", b"\x02", "boolean byte 2"),
        (["null", "string"], varint(-1), "union index -1"),
        (["null", "string"], varint(2), "union index 2"),
        (["null", "long"], varint(-1), "union index -1"),
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, varint(2), "enum index 2"),
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, varint(-1), "enum index -1"),
        ("double", b"\x00" * 7, "truncated"),
        (RECORD, b"", "truncated"),
        (RECORD, varint(10) + b"abc", r"truncated\): 7 more bytes"),
    ],
)
def test_hostile_bytes_are_refused_before_anything_is_allocated(schema, raw, message):
    with pytest.raises(MalformedAvro, match=message):
        read_value(compile_reader(schema), raw, 0)


def test_every_truncation_of_a_valid_record_is_a_decode_error():
    raw = CODEC.encode_avro(
        new_event(
            "order.placed",
            {
                "orderId": "o-1",
                "customerId": "c" * 100,
                "items": [{"sku": "sku-mug", "quantity": 300, "unitPrice": 8.0}],
                "totalAmount": 8.0,
                "currency": "EUR",
            },
            source="order-service",
        )
    )
    CODEC.decode(raw)
    for end in range(5, len(raw)):
        with pytest.raises(DecodeError, match=r"not a valid Avro record of order.placed 1.0"):
            CODEC.decode(raw[:end])


def test_unsupported_schemas_are_named():
    recursive = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    with pytest.raises(Unsupported, match="recursive type Node"):
        compile_reader(recursive)
    with pytest.raises(Unsupported, match="items take no bytes"):
        compile_reader({"type": "array", "items": "null"})
    with pytest.raises(Unsupported, match="bytes"):
        compile_reader("bytes")


# -- schema resolution -----------------------------------------------------------------------

NOTE = {"name": "giftNote", "type": ["null", "string"], "default": None}
TAGS = {"name": "tags", "type": {"type": "array", "items": "string"}, "default": ["a"]}
CHANNEL = {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["web"]}}
CHANNEL_MORE = {
    "name": "channel",
    "type": {"type": "enum", "name": "Channel", "symbols": ["web", "app"], "default": "web"},
}
PAIRS = {
    "a field with a default is added": (order_placed(), order_placed(NOTE, TAGS)),
    "a field is removed": (order_placed(NOTE, TAGS), order_placed()),
    "int promotes to long": (order_placed(), order_placed(quantity="long")),
    "int promotes to double": (order_placed(), order_placed(quantity="double")),
    "int is read by a union": (order_placed(), order_placed(quantity=["null", "long"])),
    "a union is read by its branch": (order_placed(quantity=["null", "int"]), order_placed()),
    "enum symbols the reader lacks become its default": (
        order_placed(CHANNEL_MORE),
        order_placed({**CHANNEL_MORE, "type": {**CHANNEL_MORE["type"], "symbols": ["web"]}}),
    ),
    "an enum gains a symbol": (order_placed(CHANNEL), order_placed(CHANNEL_MORE)),
}


@pytest.mark.parametrize("pair", PAIRS.values(), ids=list(PAIRS))
@PROPERTY
@given(data=st.data())
def test_resolution_decodes_as_fastavro_resolves(pair, data):
    writer, reader = pair
    value = data.draw(values(writer))
    raw = fastavro_encode(writer, value)
    try:
        expected = fastavro_decode(raw, writer, reader)
    except Exception:  # e.g. a null read by a non-null reader: an error for both
        with pytest.raises(MalformedAvro):
            decode(writer, raw, reader)
        return
    assert same(decode(writer, raw, reader), expected)


def test_defaults_are_copied_so_that_records_do_not_share_them():
    writer, reader = PAIRS["a field with a default is added"]
    raw = fastavro_encode(
        writer,
        {"orderId": "o", "customerId": "c", "items": [], "totalAmount": 1.0, "currency": None},
    )
    first, second = decode(writer, raw, reader), decode(writer, raw, reader)
    first["tags"].append("b")
    assert second["tags"] == ["a"]


def test_an_older_minor_is_read_through_the_compiled_decoder(tmp_path):
    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "1.1"): order_placed(NOTE),
        },
    )
    codec = EventCodec(registry)
    old = EventCodec(make_registry(tmp_path / "old", {("order.placed", "1.0"): order_placed()}))
    data = {
        "orderId": "o-1",
        "customerId": "c-9",
        "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}],
        "totalAmount": 16.0,
        "currency": None,
    }
    raw = old.encode_avro(new_event("order.placed", data, source="s", version="1.0.0"))
    event = codec.decode(raw)
    assert codec._avro_plans[1][1].read is not None
    assert event.version == "1.1.0"
    assert event.data == {**data, "giftNote": None}


def test_pairs_the_decoder_does_not_compile_are_read_by_fastavro(tmp_path):
    renamed = {**NOTE, "name": "note", "aliases": ["giftNote"]}
    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(NOTE),
            ("order.placed", "1.1"): order_placed(renamed),
        },
    )
    codec = EventCodec(registry)
    data = {
        "orderId": "o-1",
        "customerId": "c-9",
        "items": [],
        "totalAmount": 16.0,
        "currency": None,
        "giftNote": "hi",
    }
    raw = codec.encode_avro(new_event("order.placed", data, source="s", version="1.0.0"))
    event = codec.decode(raw)
    assert codec._avro_plans[1][1].read is None
    assert event.data["note"] == "hi"
    with pytest.raises(DecodeError, match=r"bytes left after the Avro record"):
        codec.decode(raw + b"\x00")
    with pytest.raises(DecodeError, match=r"not a valid Avro record.*EOFError"):
        codec.decode(raw[:-3])


def test_floats_decode_as_fastavro_decodes_them():
    raw = struct.pack("<f", 0.1)
    assert decode("float", raw) == fastavro_decode(raw, "float")
    assert decode("float", raw, "double") == fastavro_decode(raw, "float", "double")

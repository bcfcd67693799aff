import math
import struct

import orjson
import pytest
from faust.serializers import codecs as faust_codecs

from schemas import (
    CONTENT_TYPE_AVRO,
    DecodeError,
    EncodeError,
    Envelope,
    EventCodec,
    EventError,
    LimitExceededError,
    UnknownSchemaError,
    UnsupportedVersionError,
    ValidationError,
    decode_event,
    new_event,
)
from schemas.exceptions import EventideError
from schemas.faust_codecs import register_codecs

DESIGN_EXAMPLE = {
    "id": "3f0c6a52-0000-4000-8000-000000000001",
    "name": "order.placed",
    "timestamp": "2026-11-27T15:00:00.000Z",
    "version": "1.0.0",
    "source": "order-service",
    "correlationId": "c0ffee00-0000-4000-8000-000000000001",
    "causationId": None,
    "data": {"orderId": "o-1", "customerId": "c-9", "items": [], "totalAmount": 42.5},
}


@pytest.fixture(scope="module")
def codec():
    return EventCodec()


def placed(**data):
    base = {
        "orderId": "o-1",
        "customerId": "c-9",
        "items": [
            {"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0},
            {"sku": "sku-tea", "quantity": 1, "unitPrice": 4.5},
            {"sku": "sku-pot", "quantity": 1, "unitPrice": 20.0},
        ],
        "totalAmount": 40.5,
        "currency": "EUR",
    }
    return new_event("order.placed", {**base, **data}, source="order-service")


def json_of(event, **changes):
    return orjson.dumps({**event.to_dict(), **changes})


def test_the_design_example_decodes_with_defaults_filled_in(codec):
    event = codec.decode(orjson.dumps(DESIGN_EXAMPLE))
    assert event.name == "order.placed"
    assert event.correlation_id == DESIGN_EXAMPLE["correlationId"]
    assert event.data == {**DESIGN_EXAMPLE["data"], "currency": None}


def test_avro_and_json_reach_the_agent_as_the_same_value(codec):
    event = placed()
    from_json = codec.decode(codec.encode_json(event))
    from_avro = codec.decode(codec.encode_avro(event))
    assert isinstance(from_avro, Envelope)
    assert from_json == from_avro == event


def test_an_int_in_a_double_field_becomes_a_float_as_in_avro(codec):
    event = codec.decode(json_of(placed(), data={**placed().data, "totalAmount": 40}))
    assert event.data["totalAmount"] == 40.0 and type(event.data["totalAmount"]) is float


def test_avro_uses_the_confluent_wire_format(codec):
    raw = codec.encode_avro(placed())
    assert raw[0] == 0
    assert struct.unpack(">I", raw[1:5]) == (2,)  # order.placed 1.0 in schemas/registry.json


def test_content_type_header_picks_the_form(codec):
    event = placed()
    assert codec.decode(codec.encode_avro(event), [("content-type", b"application/avro")]) == event
    assert (
        codec.decode(codec.encode_json(event), {"content-type": "application/json; charset=utf-8"})
        == event
    )
    with pytest.raises(
        DecodeError,
        match=r"content-type says Avro but the value does not start with the magic byte",
    ):
        codec.decode(codec.encode_json(event), [("content-type", CONTENT_TYPE_AVRO.encode())])
    with pytest.raises(DecodeError, match=r"is not valid JSON.*is its content-type header wrong"):
        codec.decode(codec.encode_avro(event), [("content-type", b"application/json")])
    with pytest.raises(DecodeError, match=r'content-type "text/plain" is neither JSON nor Avro'):
        codec.decode(codec.encode_json(event), [("content-type", b"text/plain")])


def test_headers_name_the_form_sent(codec):
    headers = dict(codec.headers(placed(), CONTENT_TYPE_AVRO))
    assert headers["content-type"] == b"application/avro"
    assert headers["event-name"] == b"order.placed"


def test_decode_event_is_the_one_call_for_agents():
    event = placed()
    assert decode_event(EventCodec().encode_avro(event), None) == event
    assert decode_event(orjson.dumps(DESIGN_EXAMPLE)).data["currency"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "items": [{"sku": "a", "quantity": 1, "unitPrice": 1.0}] * 2
                + [{"sku": "a", "quantity": "three", "unitPrice": 1.0}]
            },
            'data.items[2].quantity: expected int, got "three"',
        ),
        (
            {"items": [{"sku": "a", "quantity": 2**31, "unitPrice": 1.0}]},
            "data.items[0].quantity: expected int (-2147483648..2147483647), got 2147483648",
        ),
        (
            {"items": [{"sku": "a", "quantity": True, "unitPrice": 1.0}]},
            "data.items[0].quantity: expected int, got True",
        ),
        (
            {"items": [{"sku": "a", "quantity": 1}]},
            "data.items[0].unitPrice: expected a value (required field), "
            "got nothing (field missing)",
        ),
        ({"totalAmount": "12"}, 'data.totalAmount: expected double, got "12"'),
        ({"currency": 978}, "data.currency: expected string or null, got 978"),
        (
            {"items": {"sku": "a"}},
            "data.items: expected array of record OrderLine, got {'sku': 'a'}",
        ),
        ({"orderId": None}, "data.orderId: expected string, got None"),
        (
            {"note": "hi"},
            "data.note: expected only the fields of OrderPlaced "
            '(orderId, customerId, items, totalAmount, currency), got "hi"',
        ),
    ],
)
def test_invalid_data_names_path_expected_type_and_value(codec, change, message):
    with pytest.raises(ValidationError) as info:
        codec.decode(json_of(placed(), data={**placed().data, **change}))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"data": None}, ValidationError, "data: expected object (record OrderPlaced), got None"),
        ({"id": ""}, ValidationError, 'id: expected a non-empty string, got ""'),
        ({"name": 5}, ValidationError, "name: expected a non-empty string, got 5"),
        (
            {"timestamp": "soon"},
            ValidationError,
            'timestamp: expected an ISO-8601 time such as 2026-11-27T15:00:00.000Z, got "soon"',
        ),
        ({"causationId": 7}, ValidationError, "causationId: expected a string or null, got 7"),
        (
            {"version": "one"},
            ValidationError,
            'version: expected a semantic version such as 1.0.0, got "one"',
        ),
        (
            {"name": "order.teleported"},
            UnknownSchemaError,
            "no schema for event 'order.teleported'",
        ),
        (
            {"version": "2.0.0"},
            UnsupportedVersionError,
            "order.placed 2.0.0: no reader for major version 2; "
            "this worker reads order.placed up to 1.0",
        ),
    ],
)
def test_invalid_envelopes_are_named(codec, change, error, message):
    with pytest.raises(error) as info:
        codec.decode(json_of(placed(), **change))
    assert message in str(info.value)


def test_a_newer_minor_version_in_json_is_read_by_dropping_what_it_added(codec):
    event = codec.decode(
        json_of(placed(), version="1.4.0", data={**placed().data, "giftWrap": True})
    )
    assert "giftWrap" not in event.data
    assert event.version == "1.0.0"  # the shape the agent gets


def test_nan_in_avro_is_rejected(codec):
    raw = codec.encode_avro(placed(totalAmount=1.5))
    packed = struct.pack("<d", 1.5)
    assert raw.count(packed) == 1
    with pytest.raises(ValidationError, match=r"data.totalAmount: expected finite double, got nan"):
        codec.decode(raw.replace(packed, struct.pack("<d", math.nan)))


def test_avro_with_a_schema_id_the_registry_lacks(codec):
    raw = codec.encode_avro(placed())
    with pytest.raises(UnknownSchemaError, match=r"schema id 4096 is not in the registry"):
        codec.decode(raw[:1] + (4096).to_bytes(4, "big") + raw[5:])


def test_avro_with_bytes_of_another_schema(codec):
    shipped = new_event(
        "order.shipped", {"orderId": "o-1", "trackingNumber": "T1", "carrier": "DHL"}
    )
    raw = codec.encode_avro(shipped)
    with pytest.raises(EventError):
        codec.decode(raw[:1] + (2).to_bytes(4, "big") + raw[5:])  # claims order.placed
    with pytest.raises(DecodeError, match=r"bytes left after the Avro record"):
        codec.decode(raw + b"\x00\x00")


def test_avro_whose_envelope_contradicts_its_schema_id(codec):
    event = placed()
    wrong = Envelope(
        event.id, "order.placed", event.timestamp, "1.0.0", event.source, None, None, event.data
    )
    raw = codec.encode_avro(wrong).replace(b"\x18order.placed", b"\x18order.placex")
    with pytest.raises(
        ValidationError, match=r'name: expected "order.placed", the event of schema id 2'
    ):
        codec.decode(raw)


def test_encoding_checks_the_event(codec):
    with pytest.raises(ValidationError, match=r"data.items\[0\].quantity: expected int"):
        codec.encode_avro(placed(items=[{"sku": "a", "quantity": 1.5, "unitPrice": 1.0}]))
    with pytest.raises(
        EncodeError, match=r"cannot encode order.placed .*no schema for order.placed 9.0"
    ):
        codec.encode_json(
            Envelope("i", "order.placed", "2026-01-01T00:00:00Z", "9.0.0", "s", None, None, {})
        )
    original = placed(totalAmount=3)
    codec.encode_json(original)
    assert original.data["totalAmount"] == 3 and "giftWrap" not in original.data  # left untouched


def test_encoding_refuses_an_event_the_registry_does_not_know(codec):
    teleported = new_event("order.teleported", {"orderId": "o-1"})
    for encode in (codec.encode_json, codec.encode_avro, codec.encode):
        with pytest.raises(EncodeError, match=r"cannot encode order.teleported .*no schema"):
            encode(teleported)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp": "yesterday"}, "timestamp: expected an ISO-8601 time such as"),
        ({"id": ""}, 'id: expected a non-empty string, got ""'),
        ({"source": 7}, "source: expected a non-empty string, got 7"),
        ({"correlation_id": 5}, "correlationId: expected a string or null, got 5"),
        ({"causation_id": "x" * 70_000}, "causationId: expected a string or null"),
    ],
)
def test_encoding_names_a_bad_envelope_field(codec, change, message):
    from dataclasses import replace

    event = replace(placed(), **change)
    for encode in (codec.encode_json, codec.encode_avro):
        with pytest.raises(ValidationError) as info:
            encode(event)
        assert message in str(info.value)


def test_encoding_refuses_what_consumers_would_reject():
    from schemas import Limits

    small = EventCodec(limits=Limits(max_record_bytes=300))
    with pytest.raises(EncodeError, match=r"more than 300 \(EVENTIDE_MAX_RECORD_BYTES\)"):
        small.encode_json(placed())


def test_errors_form_one_hierarchy_and_are_not_retriable():
    for cls in (
        DecodeError,
        ValidationError,
        UnknownSchemaError,
        UnsupportedVersionError,
        LimitExceededError,
        EncodeError,
    ):
        assert issubclass(cls, EventError) and issubclass(cls, EventideError)
        assert cls.retriable is False


def test_faust_topics_can_declare_the_codecs(codec):
    register_codecs(codec)
    event = placed()
    assert faust_codecs.get_codec("eventide").loads(codec.encode_avro(event)) == event
    assert faust_codecs.get_codec("eventide").loads(codec.encode_json(event)) == event
    assert faust_codecs.get_codec("eventide-avro").dumps(event) == codec.encode_avro(event)
    assert faust_codecs.get_codec("eventide-json").dumps(event) == codec.encode_json(event)
    with pytest.raises(DecodeError):
        faust_codecs.get_codec("eventide-avro").loads(codec.encode_json(event))


def test_optional_fields_may_be_left_out_in_both_forms(codec):
    event = new_event(
        "order.saga_failed",
        {"orderId": "o-1", "sagaId": "s-1", "failedStep": "payment", "reason": "declined"},
    )
    expected = {**event.data, "compensated": True}
    assert codec.decode(codec.encode_avro(event)).data == expected
    assert codec.decode(codec.encode_json(event)).data == expected


def test_the_memo_decodes_a_record_shared_by_projections_once():
    shared = EventCodec(memo=True)
    value = shared.encode_avro(placed())
    assert shared.decode(value) is shared.decode(value)  # the second projection's decode
    assert shared.decode(bytes(value)) == shared.decode(value)  # another object: decoded
    alone = EventCodec()
    assert alone.decode(value) is not alone.decode(value)  # no memo: nothing kept
    assert alone.decode(value) == shared.decode(value)

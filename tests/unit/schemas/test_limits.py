import tracemalloc

import orjson
import pytest

from schemas import DecodeError, EventCodec, LimitExceededError, Limits, ValidationError, new_event
from schemas.limits import json_depth
from streams.exceptions import SettingsError
from streams.settings import Settings


@pytest.fixture(scope="module")
def codec():
    return EventCodec()


def placed(**data):
    base = {
        "orderId": "o-1",
        "customerId": "c-9",
        "items": [],
        "totalAmount": 1.0,
        "currency": None,
    }
    return new_event("order.placed", {**base, **data})


def failed(reason: str):
    """An event with a free-text field (no constraints: the limits alone apply)."""
    return new_event("payment.failed", {"orderId": "o-1", "sagaId": "s-1", "reason": reason})


def test_records_over_the_size_limit_are_not_decoded():
    small = EventCodec(limits=Limits(max_record_bytes=200))
    event = failed("c" * 300)
    raw_json, raw_avro = EventCodec().encode_json(event), EventCodec().encode_avro(event)
    for raw in (raw_json, raw_avro):
        with pytest.raises(
            LimitExceededError, match=r"more than the limit of 200 \(EVENTIDE_MAX_RECORD_BYTES\)"
        ):
            small.decode(raw)


def test_deep_json_is_refused_before_parsing(codec):
    deep = b'{"name": "order.placed", "x": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(
        LimitExceededError, match=r"JSON nests deeper than 32 levels \(EVENTIDE_MAX_JSON_DEPTH\)"
    ):
        codec.decode(deep)


def test_a_megabyte_of_brackets_is_a_limit_error_not_a_recursion_error(codec):
    with pytest.raises(LimitExceededError):
        codec.decode(b"[" * 1_000_000)
    with pytest.raises(LimitExceededError):
        codec.decode(b"[" * 2_000_000)


def test_brackets_inside_strings_do_not_count(codec):
    event = failed('[[[{{{"\\' * 20)
    assert codec.decode(codec.encode_json(event)) == event


def test_json_depth_counts_nesting_outside_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[["}], "c": "\\"[{"}') == 3
    assert json_depth(b"[]") == 1
    assert json_depth(b'"just a string"') == 0


def test_long_strings_and_arrays_are_refused_with_the_path(codec):
    strict = EventCodec(limits=Limits(max_string_length=10, max_array_length=2))
    with pytest.raises(
        ValidationError,
        match=r'data.customerId: expected string of at most 10 characters, got "ccccccccccc"',
    ):
        strict.decode(codec.encode_json(placed(customerId="c" * 11)))
    line = {"sku": "a", "quantity": 1, "unitPrice": 1.0}
    with pytest.raises(
        ValidationError, match=r"data.items: expected array of at most 2 elements, got 3 elements"
    ):
        strict.decode(codec.encode_json(placed(items=[line] * 3)))
    envelope_strict = EventCodec(limits=Limits(max_string_length=40))
    with pytest.raises(
        ValidationError, match=r"source: expected a string of at most 40 characters"
    ):
        envelope_strict.decode(orjson.dumps({**placed().to_dict(), "source": "s" * 41}))


def test_avro_strings_are_held_to_the_same_limit():
    big = "c" * 70_000  # larger than the default string limit, so the Avro record is walked
    raw = EventCodec(limits=Limits(max_string_length=100_000)).encode_avro(failed(big))
    with pytest.raises(
        ValidationError, match=r"data.reason: expected string of at most 65536 characters"
    ):
        EventCodec().decode(raw)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_are_rejected(codec, literal):
    raw = codec.encode_json(placed(totalAmount=1.25)).replace(b"1.25", literal)
    with pytest.raises(DecodeError, match=r"value is not valid JSON"):
        codec.decode(raw)


def test_a_huge_declared_avro_length_allocates_nothing_big(codec):
    header = codec.encode_avro(placed())[:5]
    # id: a string whose zigzag varint length claims about 2**62 bytes
    hostile = header + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"x" * 100
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            codec.decode(hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_a_huge_declared_avro_array_is_a_decode_error(codec):
    raw = codec.encode_avro(placed(items=[]))
    # the items array is the block count 0 just before totalAmount's 8 bytes and the
    # currency union index; claim 2**40 items instead.
    tail = raw[-10:]
    assert tail[0] == 0
    hostile = raw[:-10] + b"\x80\x80\x80\x80\x80\x80\x01" + tail[1:]
    with pytest.raises(DecodeError):
        codec.decode(hostile)


def test_limits_are_settings():
    settings = Settings.from_env(
        {
            "EVENTIDE_MAX_RECORD_BYTES": "2048",
            "EVENTIDE_MAX_JSON_DEPTH": "8",
            "EVENTIDE_MAX_STRING_LENGTH": "100",
            "EVENTIDE_MAX_ARRAY_LENGTH": "5",
        }
    )
    assert settings.limits == Limits(2048, 8, 100, 5)
    assert Settings.from_env({}).limits == Limits(1_048_576, 32, 65_536, 10_000)
    with pytest.raises(SettingsError, match=r"EVENTIDE_MAX_JSON_DEPTH=2: expected 4..1000"):
        Settings.from_env({"EVENTIDE_MAX_JSON_DEPTH": "2"})
    with pytest.raises(
        SettingsError, match=r"EVENTIDE_MAX_RECORD_BYTES='1MB': expected an integer"
    ):
        Settings.from_env({"EVENTIDE_MAX_RECORD_BYTES": "1MB"})

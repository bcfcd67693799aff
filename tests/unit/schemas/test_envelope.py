"""The envelope contract, as the one codec reads and writes it."""

import orjson
import pytest

from schemas import DecodeError, EventCodec, ValidationError, new_event

CODEC = EventCodec()

GOOD = {
    "id": "3f0c6a52-0000-4000-8000-000000000001",
    "name": "order.placed",
    "timestamp": "2026-11-27T15:00:00.000Z",
    "version": "1.0.0",
    "source": "order-service",
    "correlationId": "c0ffee00-0000-4000-8000-000000000001",
    "causationId": None,
    "data": {"orderId": "o-1", "customerId": "c-9", "items": [], "totalAmount": 42.5},
}


def test_decodes_the_design_example():
    event = CODEC.decode(orjson.dumps(GOOD))
    assert event.id == GOOD["id"]
    assert event.name == "order.placed"
    assert event.correlation_id == GOOD["correlationId"]
    assert event.causation_id is None
    assert event.data["totalAmount"] == 42.5
    assert event.data["currency"] is None  # the schema's default, filled in


def test_new_event_round_trips_through_json():
    data = {"orderId": "o-1", "trackingNumber": "T1", "carrier": "DHL"}
    event = new_event("order.shipped", data, source="s")
    assert event.timestamp.endswith("Z") and len(event.timestamp) == len("2026-11-27T15:00:00.000Z")
    assert event.correlation_id == event.id  # a new flow starts its own correlation
    assert CODEC.decode(CODEC.encode_json(event)) == event
    assert CODEC.encode_json(event) == orjson.dumps(event.to_dict())


def test_headers_carry_the_contract_fields():
    event = new_event("order.placed", {"orderId": "o-1"}, correlation_id="corr-1")
    headers = dict(event.headers())
    assert headers == {
        "event-id": event.id.encode(),
        "event-name": b"order.placed",
        "event-version": b"1.0.0",
        "content-type": b"application/json",
        "correlation-id": b"corr-1",
    }


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"{not json", DecodeError, "value is not valid JSON"),
        (b"", DecodeError, "value is not valid JSON"),
        (None, DecodeError, "tombstone"),
        (b"[1, 2]", ValidationError, "$: expected a JSON object (the envelope), got [1, 2]"),
    ],
)
def test_undecodable_bytes(raw, error, message):
    with pytest.raises(error) as info:
        CODEC.decode(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "id: expected a non-empty string, got None"),
        ({"name": ""}, 'name: expected a non-empty string, got ""'),
        ({"timestamp": "yesterday"}, "timestamp: expected an ISO-8601 time such as"),
        ({"version": 1}, "version: expected a non-empty string, got 1"),
        ({"correlationId": 5}, "correlationId: expected a string or null, got 5"),
        ({"data": "x"}, 'data: expected object (record OrderPlaced), got "x"'),
    ],
)
def test_invalid_fields_are_named(change, message):
    with pytest.raises(ValidationError) as info:
        CODEC.decode(orjson.dumps({**GOOD, **change}))
    assert message in str(info.value)


def test_missing_field_says_so():
    doc = dict(GOOD)
    del doc["source"]
    with pytest.raises(ValidationError, match=r"source: expected a non-empty string, got nothing"):
        CODEC.decode(orjson.dumps(doc))


def test_decode_errors_are_not_retriable():
    assert DecodeError.retriable is False
    assert ValidationError.retriable is False

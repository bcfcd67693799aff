"""``eventide history`` decodes records as a worker does: Avro and JSON alike."""

import orjson
from click.testing import CliRunner

from eventide import cli
from eventide.tools.history import HistoryEntry, decode_record
from schemas import CONTENT_TYPE_AVRO, EventCodec, new_event

CODEC = EventCodec()


def placed():
    return new_event(
        "order.placed",
        {
            "orderId": "o-1",
            "customerId": "c-9",
            "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}],
            "totalAmount": 16.0,
            "currency": "EUR",
        },
        source="order-service",
    )


def test_an_avro_record_decodes_with_or_without_its_content_type():
    event = placed()
    raw = CODEC.encode_avro(event)
    assert decode_record(CODEC, raw, CODEC.headers(event, CONTENT_TYPE_AVRO)) == (event, None)
    assert decode_record(CODEC, raw, ()) == (event, None)  # the magic byte says Avro


def test_a_json_record_decodes_to_the_same_event():
    event = placed()
    assert decode_record(CODEC, CODEC.encode_json(event), CODEC.headers(event)) == (event, None)


def test_an_undecodable_record_says_why():
    event, error = decode_record(CODEC, b"{not json", None)
    assert event is None and error is not None and "not valid JSON" in error
    event, error = decode_record(CODEC, None, None)
    assert event is None and error is not None and "tombstone" in error


def test_history_prints_an_avro_record_as_an_event_and_as_json(monkeypatch):
    event = placed()
    decoded, error = decode_record(CODEC, CODEC.encode_avro(event), None)
    entries = [HistoryEntry("order-events", 3, 7, decoded, error)]

    async def history(settings, entity_id, topics=None, codec=None):
        return entries

    monkeypatch.setattr(cli, "entity_history", history)
    runner = CliRunner()
    text = runner.invoke(cli.main, ["history", "o-1"], env={})
    assert text.exit_code == 0, text.output
    assert "undecodable" not in text.output
    assert f"order-events[3]@7  {event.timestamp}  order.placed" in text.output
    as_json = runner.invoke(cli.main, ["history", "o-1", "--json"], env={})
    assert as_json.exit_code == 0, as_json.output
    assert orjson.loads(as_json.output) == event.to_dict()

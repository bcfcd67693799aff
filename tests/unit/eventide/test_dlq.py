"""``eventide dlq show`` prints a dead letter's event through the registry-checked codec."""

import orjson

from eventide.tools.dlq import DeadLetter
from schemas import CONTENT_TYPE_AVRO, EventCodec, new_event

CODEC = EventCodec()


def letter(value: bytes, headers=()) -> DeadLetter:
    dlq = (("dlq-error-class", b"RuntimeError"), ("dlq-attempts", b"5"))
    return DeadLetter("order-events.dlq", 0, 7, b"o-1", value, (*headers, *dlq))


def test_an_avro_dead_letter_shows_its_event_as_json():
    event = new_event("user.created", {"userId": "u-1", "email": "a@b.co", "name": "Ann"})
    headers = tuple(CODEC.headers(event, CONTENT_TYPE_AVRO))
    (line,) = letter(CODEC.encode_avro(event), headers).value_lines(CODEC)
    assert line.startswith("event    ")
    shown = orjson.loads(line.removeprefix("event    "))
    assert (shown["id"], shown["name"], shown["data"]["email"]) == (
        event.id,
        "user.created",
        "a@b.co",
    )


def test_an_undecodable_dead_letter_shows_why_and_its_raw_value():
    lines = letter(b'{"id": "x", "name": 3}').value_lines(CODEC)
    assert lines[0].startswith("decode   ") and "name" in lines[0]
    assert lines[1] == 'value    {"id": "x", "name": 3}'

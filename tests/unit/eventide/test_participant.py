"""Demo saga participants: idempotent by command id, logged, failure injection."""

from __future__ import annotations

import orjson

from eventide.tools.participant import Participant, fails, read_log
from schemas import new_event
from schemas.codecs import EventCodec
from streams.settings import Settings


def settings(tmp_path, **env: str) -> Settings:
    return Settings.from_env({"EVENTIDE_PARTICIPANT_LOG_DIR": str(tmp_path), **env})


def reserve(order_id: str = "o-1"):
    data = {"orderId": order_id, "sagaId": "s-1", "items": [{"sku": "a", "quantity": 1}]}
    return new_event("inventory.reserve", data)


def test_a_command_is_applied_once_and_answered_again_with_the_same_reply(tmp_path):
    codec = EventCodec()
    p = Participant(settings(tmp_path), "inventory", codec)
    command = reserve()
    first, applied = p.handle(command)
    again, applied_again = p.handle(command)
    assert applied and not applied_again and again == first
    assert orjson.loads(first)["name"] == "inventory.reserved"
    # a restarted participant reads its log back: still a duplicate
    restarted = Participant(settings(tmp_path), "inventory", codec)
    assert restarted.handle(command) == (first, False)
    assert [e["commandId"] for e in read_log(tmp_path / "inventory.jsonl")] == [command.id]


def test_failure_rate_never_answer_and_unknown_compensations(tmp_path):
    codec = EventCodec()
    always = Participant(
        settings(tmp_path, EVENTIDE_PARTICIPANT_FAILURE_RATE="1"), "inventory", codec
    )
    reply, _ = always.handle(reserve("o-2"))
    assert orjson.loads(reply)["name"] == "inventory.rejected"
    down = Participant(
        settings(tmp_path / "d", EVENTIDE_PARTICIPANT_NEVER_ANSWER="true"), "inventory", codec
    )
    assert down.handle(reserve("o-3")) == (None, False)
    assert not (tmp_path / "d" / "inventory.jsonl").exists()
    release = new_event(
        "inventory.release", {"orderId": "o-9", "sagaId": "s", "reservationId": "r"}
    )
    reply, _ = always.handle(release)
    assert orjson.loads(reply)["name"] == "inventory.released"
    assert read_log(tmp_path / "inventory.jsonl")[-1]["known"] is False
    assert sum(fails(f"id-{i}", 0.1) for i in range(2000)) in range(150, 250)

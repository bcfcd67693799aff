import orjson
import pytest
from click.testing import CliRunner

from eventide.cli import main
from schemas import EventCodec, UnsupportedVersionError, ValidationError, new_event
from schemas.compat import can_read, check_registry

from .registries import make_registry, order_placed, write_registry

OPTIONAL_NOTE = {"name": "giftNote", "type": ["null", "string"], "default": None}
REQUIRED_NOTE = {"name": "giftNote", "type": "string"}


def _placed_data(**extra):
    return {
        "orderId": "o-1",
        "customerId": "c-9",
        "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}],
        "totalAmount": 16.0,
        "currency": "EUR",
        **extra,
    }


def _enum(*symbols, **extra):
    return {"type": "enum", "name": "Channel", "symbols": list(symbols), **extra}


GOOD = {
    "an optional field with a default is added": (order_placed(), order_placed(OPTIONAL_NOTE)),
    "a field with a default is removed": (order_placed(OPTIONAL_NOTE), order_placed()),
    "an enum symbol is added, the enum has a default": (
        order_placed({"name": "channel", "type": _enum("web", "shop", default="web")}),
        order_placed({"name": "channel", "type": _enum("web", "shop", "app", default="web")}),
    ),
    "a field is renamed with an alias and keeps its default": (
        order_placed(OPTIONAL_NOTE),
        order_placed({**OPTIONAL_NOTE, "name": "note", "aliases": ["giftNote"]}),
    ),
}

# (old, new, direction, path, reason)
BAD = {
    "a required field is added": (
        order_placed(),
        order_placed(REQUIRED_NOTE),
        "backward",
        "data.giftNote",
        "the reader requires this field, the writer does not write it, and it has no default",
    ),
    "a required field is removed": (
        order_placed(REQUIRED_NOTE),
        order_placed(),
        "forward",
        "data.giftNote",
        "the reader requires this field",
    ),
    "int widens to long": (
        order_placed(),
        order_placed(quantity="long"),
        "forward",
        "data.items[].quantity",
        "the reader expects int, the writer writes long, which it cannot read",
    ),
    "int becomes string": (
        order_placed(),
        order_placed(quantity="string"),
        "backward",
        "data.items[].quantity",
        "the reader expects string, the writer writes int",
    ),
    "a required field becomes nullable": (
        order_placed(),
        order_placed(quantity=["null", "int"]),
        "forward",
        "data.items[].quantity",
        "the reader expects int, the writer writes null",
    ),
    "an enum symbol is added without a default": (
        order_placed({"name": "channel", "type": _enum("web", "shop")}),
        order_placed({"name": "channel", "type": _enum("web", "shop", "app")}),
        "forward",
        "data.channel",
        "the writer's symbols app are not in the reader's enum Channel, which has no default",
    ),
    "a record is renamed": (
        order_placed(),
        {**order_placed(), "name": "OrderSubmitted"},
        "backward",
        "data",
        "the reader's record OrderSubmitted and the writer's record OrderPlaced "
        "have different names",
    ),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_known_good_evolutions_pass(tmp_path, case):
    old, new = GOOD[case]
    registry = make_registry(tmp_path, {("order.placed", "1.0"): old, ("order.placed", "1.1"): new})
    assert check_registry(registry) == (1, [])


@pytest.mark.parametrize("case", list(BAD))
def test_known_bad_evolutions_fail_for_the_right_reason(tmp_path, case):
    old, new, direction, path, reason = BAD[case]
    registry = make_registry(tmp_path, {("order.placed", "1.0"): old, ("order.placed", "1.1"): new})
    pairs, problems = check_registry(registry)
    assert pairs == 1
    found = [(p.direction, p.problem.path) for p in problems]
    assert (direction, path) in found, found
    (problem,) = [p for p in problems if (p.direction, p.problem.path) == (direction, path)]
    assert reason in problem.problem.reason
    assert str(problem).startswith(f"order.placed 1.1 is not {direction} compatible with 1.0")


def test_int_to_long_is_still_backward_compatible():
    assert can_read("long", "int") == []
    assert [str(p) for p in can_read("int", "long")] == [
        "$: the reader expects int, the writer writes long, which it cannot read"
    ]


def test_major_versions_are_not_compared(tmp_path):
    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "2.0"): order_placed(REQUIRED_NOTE),
        },
        upcasters={("order.placed", 1): lambda data: {**data, "giftNote": ""}},
    )
    assert check_registry(registry) == (0, [])


def test_old_minor_data_decodes_into_the_newest_shape(tmp_path):
    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "1.1"): order_placed(OPTIONAL_NOTE),
        },
    )
    codec = EventCodec(registry)
    old = new_event("order.placed", _placed_data(), version="1.0.0")
    for raw in (codec.encode_avro(old), codec.encode_json(old)):
        event = codec.decode(raw)
        assert event.data == {**old.data, "giftNote": None}
        assert event.version == "1.1.0"
    current = new_event("order.placed", _placed_data(giftNote="hi"), version="1.1.0")
    assert codec.decode(codec.encode_avro(current)) == current


def test_an_older_major_reaches_agents_through_its_upcaster(tmp_path):
    def to_v2(data):
        return {**data, "giftNote": f"for {data['customerId']}"}

    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "2.0"): order_placed(REQUIRED_NOTE),
        },
        upcasters={("order.placed", 1): to_v2},
    )
    codec = EventCodec(registry)
    old = new_event("order.placed", _placed_data(), version="1.0.0")
    for raw in (codec.encode_avro(old), codec.encode_json(old)):
        event = codec.decode(raw)
        assert event.data["giftNote"] == "for c-9"
        assert event.version == "2.0.0"


def test_an_upcaster_that_breaks_the_new_schema_is_caught(tmp_path):
    registry = make_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "2.0"): order_placed(REQUIRED_NOTE),
        },
        upcasters={("order.placed", 1): lambda data: {**data, "giftNote": 5}},
    )
    codec = EventCodec(registry)
    with pytest.raises(
        ValidationError, match=r"data.giftNote \(after upcasting to 2.0\): expected string, got 5"
    ):
        codec.decode(codec.encode_json(new_event("order.placed", _placed_data())))


def test_a_version_no_reader_handles_is_a_clear_error(tmp_path):
    registry = make_registry(tmp_path, {("order.placed", "2.0"): order_placed()})
    codec = EventCodec(registry)
    raw = orjson.dumps({**new_event("order.placed", _placed_data()).to_dict(), "version": "1.3.0"})
    with pytest.raises(
        UnsupportedVersionError,
        match=r"order.placed 1.3.0: major version 1 is not in the registry \(known: 2.0\)",
    ):
        codec.decode(raw)


def test_schemas_check_command_passes_on_the_committed_registry():
    result = CliRunner().invoke(main, ["schemas", "check"])
    assert result.exit_code == 0, result.output
    assert "ok: 23 schemas of 22 events" in result.output


def test_schemas_check_command_names_the_offending_field(tmp_path):
    write_registry(
        tmp_path,
        {
            ("order.placed", "1.0"): order_placed(),
            ("order.placed", "1.1"): order_placed(quantity="long"),
        },
    )
    result = CliRunner().invoke(main, ["schemas", "check", "--registry", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        "incompatible: order.placed 1.1 is not forward compatible with 1.0 "
        "(consumers of 1.0 cannot "
        "read 1.1 data): data.items[].quantity: the reader expects int, the writer writes long"
    ) in result.output


def test_schemas_check_command_reports_a_broken_registry(tmp_path):
    write_registry(
        tmp_path, {("order.placed", "1.0"): order_placed(), ("order.placed", "2.0"): order_placed()}
    )
    result = CliRunner().invoke(main, ["schemas", "check", "--registry", str(tmp_path)])
    assert result.exit_code == 2
    assert "no upcaster reads order.placed 1.x" in result.output


def test_schemas_list_command_shows_ids():
    result = CliRunner().invoke(main, ["schemas", "list"])
    assert result.exit_code == 0
    assert (
        "    2  order.placed               1.0    avsc/order.placed/1.0.avsc"
        in result.output.splitlines()
    )

"""One resolver of Avro names: the validators, the decoder and the compatibility check agree."""

import io
import math

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas import ValidationError
from schemas.avro_names import Scope, collect, full_name, namespace_of, qualify, short_name
from schemas.avro_reader import compile_reader, read_value
from schemas.checks import run
from schemas.compat import can_read
from schemas.finite import compile_finite_check
from schemas.validate import compile_validator


def test_full_names_follow_the_avro_rules():
    assert qualify("Line", "shop") == "shop.Line"
    assert qualify("other.Line", "shop") == "other.Line"  # a dotted name is already full
    assert qualify("Line", "") == "Line"
    assert full_name({"name": "Line"}, "shop") == "shop.Line"
    assert full_name({"name": "Line", "namespace": "shop.a"}, "shop") == "shop.a.Line"
    assert full_name({"name": "Line", "namespace": ""}, "shop") == "Line"  # explicit: none
    assert full_name({"name": "x.Line", "namespace": "shop.a"}, "shop") == "x.Line"
    assert namespace_of("shop.a.Line") == "shop.a" and namespace_of("Line") == ""
    assert short_name("shop.a.Line") == "Line"


def test_a_reference_is_looked_up_in_its_namespace_first_then_as_written():
    scope: Scope[str] = Scope()
    scope.define("shop.Line", "shop's")
    scope.define("Line", "the global one")
    assert scope.resolve("Line", "shop") == "shop's"
    assert scope.resolve("Line", "elsewhere") == "the global one"
    assert scope.resolve("Line", "") == "the global one"
    assert scope.resolve("shop.Line", "elsewhere") == "shop's"
    assert scope.resolve("Gone", "shop") is None
    scope.define_once("shop.Line", "a second definition")
    assert scope.resolve("Line", "shop") == "shop's"


def _line(namespace, field, kind):
    return {
        "type": "record",
        "name": "Line",
        "namespace": namespace,
        "fields": [{"name": field, "type": kind}],
    }


def two_lines(b_kind="string"):
    """Two records named Line in two namespaces, each referenced by its short name."""
    return {
        "type": "record",
        "name": "Order",
        "namespace": "shop",
        "fields": [
            {"name": "a", "type": _line("shop.a", "x", "double")},
            {"name": "b", "type": _line("shop.b", "y", b_kind)},
            {
                "name": "a2",
                "type": {
                    "type": "record",
                    "name": "WrapA",
                    "namespace": "shop.a",
                    "fields": [{"name": "line", "type": "Line"}],
                },
            },
            {
                "name": "b2",
                "type": {
                    "type": "record",
                    "name": "WrapB",
                    "namespace": "shop.b",
                    "fields": [{"name": "line", "type": "Line"}],
                },
            },
        ],
    }


VALUE = {"a": {"x": 1.5}, "b": {"y": "s"}, "a2": {"line": {"x": 2.5}}, "b2": {"line": {"y": "t"}}}


def test_collect_finds_every_definition_with_its_namespace():
    scope = collect(two_lines())
    assert sorted(scope) == [
        "shop.Order",
        "shop.a.Line",
        "shop.a.WrapA",
        "shop.b.Line",
        "shop.b.WrapB",
    ]
    definition, inner = scope.resolve("Line", "shop.b") or ({}, "")
    assert definition["fields"][0]["name"] == "y" and inner == "shop.b"


def test_the_validator_resolves_a_short_name_in_its_namespace():
    check = compile_validator(
        two_lines(), max_string_length=100, max_array_length=10, normalize=False
    )
    assert run(check, VALUE, "data") == VALUE
    with pytest.raises(ValidationError, match=r"data\.b2\.line\.y: expected string"):
        run(check, {**VALUE, "b2": {"line": {"y": 3}}}, "data")


def test_the_finite_check_resolves_a_short_name_in_its_namespace():
    check = compile_finite_check(two_lines())
    assert check is not None
    with pytest.raises(Exception, match="finite double"):
        check({**VALUE, "a2": {"line": {"x": math.inf}}})


def test_the_decoder_resolves_a_short_name_in_its_namespace():
    fo = io.BytesIO()
    schemaless_writer(fo, parse_schema(two_lines()), VALUE)
    raw = fo.getvalue()
    assert read_value(compile_reader(two_lines()), raw, 0) == (VALUE, len(raw))


def test_the_compatibility_check_resolves_a_short_name_in_its_namespace():
    # shop.b.Line changes the type of y: both fields holding a shop.b.Line break,
    # the one holding a shop.a.Line (of the same short name) does not.
    problems = can_read(two_lines("int"), two_lines("string"), "data")
    assert [p.path for p in problems] == ["data.b.y", "data.b2.line.y"]
    assert can_read(two_lines(), two_lines(), "data") == []

"""Validators compiled once per schema into closures, run on every JSON event.

:func:`compile_validator` walks an Avro schema once and returns a function
that checks a decoded value against it: types, 32/64-bit integer ranges,
finite doubles, string and array lengths, enum symbols, required fields, and
the fields' constraints (:mod:`schemas.constraints`: bounds, patterns, no
control characters, e-mail form, personal fields' ciphertext form). It
never walks the schema again, so a check costs a few attribute-free closure
calls per field.

Two modes:

- ``normalize=True`` (decoding): the value, which the caller owns, is brought
  into the reader's shape in place: missing fields get their defaults, ints
  in double fields become floats, and with ``drop_unknown=True`` fields the
  schema does not know are removed (a newer minor version read by an older
  reader, as Avro's schema resolution does).
- ``normalize=False`` (encoding): the value is only checked, never changed.

Failures raise :class:`~schemas.exceptions.ValidationError` naming the path
(``data.items[2].quantity``), the expected type and the value found.
"""

from __future__ import annotations

import copy
from typing import Any

from .avro_names import PRIMITIVES, Scope, full_name, namespace_of
from .checks import (
    LEAVES,
    Check,
    Field,
    Invalid,
    Summary,
    check_boolean,
    check_null,
    double_check,
    int_check,
    record_check,
    run,
    string_check,
)
from .constraints import FieldConstraints, compile_test, constrained_check
from .exceptions import SchemaError, ValidationError

UNSUPPORTED = {
    "bytes": "bytes cannot travel in the JSON form",
    "fixed": "fixed cannot travel in the JSON form",
}


def compile_validator(
    schema: Any,
    *,
    max_string_length: int,
    max_array_length: int,
    normalize: bool,
    drop_unknown: bool = False,
) -> Check:
    """Compile an Avro schema (JSON form, as in a ``.avsc`` file) into a :data:`Check`."""
    return _Compiler(max_string_length, max_array_length, normalize, drop_unknown).compile(schema)


def type_name(schema: Any) -> str:
    """How a schema is named in messages: ``int``, ``string or null``, ``record OrderLine``."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        names = [type_name(s) for s in schema if s != "null"]
        return " or ".join(names + (["null"] if "null" in schema else []))
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed"):
        return f"{kind} {schema.get('name')}"
    if kind == "array":
        return f"array of {type_name(schema.get('items'))}"
    if kind == "map":
        return f"map of {type_name(schema.get('values'))}"
    return type_name(kind)


class _Compiler:
    def __init__(
        self, max_string: int, max_array: int, normalize: bool, drop_unknown: bool
    ) -> None:
        self.max_string = max_string
        self.max_array = max_array
        self.normalize = normalize
        self.drop_unknown = drop_unknown
        self.named: Scope[Check] = Scope()

    def compile(self, schema: Any, namespace: str = "") -> Check:
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return self.primitive(schema)
            check = self.named.resolve(schema, namespace)
            if check is None:
                raise SchemaError(f"unknown type {schema!r}")
            return check
        if isinstance(schema, list):
            return self.union(schema, namespace)
        if not isinstance(schema, dict):
            raise SchemaError(f"not a schema: {schema!r}")
        if "logicalType" in schema:
            raise SchemaError(
                f"logical type {schema['logicalType']!r} is not supported: the Avro and JSON "
                "forms of an event must decode to the same value"
            )
        kind = schema.get("type")
        if kind == "record":
            return self.record(schema, namespace)
        if kind == "enum":
            return self.enum(schema, namespace)
        if kind == "array":
            return self.array(schema, namespace)
        if kind == "map":
            return self.map(schema, namespace)
        if kind in UNSUPPORTED:
            raise SchemaError(f"type {kind!r} is not supported: {UNSUPPORTED[kind]}")
        return self.compile(kind, namespace)

    def primitive(self, kind: str) -> Check:
        if kind in UNSUPPORTED:
            raise SchemaError(f"type {kind!r} is not supported: {UNSUPPORTED[kind]}")
        if kind == "string":
            return string_check(self.max_string)
        if kind in ("int", "long"):
            return int_check(kind)
        if kind in ("double", "float"):
            return double_check(kind, self.normalize)
        if kind == "boolean":
            return check_boolean
        if kind == "null":
            return check_null
        raise SchemaError(f"unknown type {kind!r}")

    def union(self, schema: list[Any], namespace: str) -> Check:
        branches = [s for s in schema if s != "null"]
        if len(branches) != 1 or len(schema) > 2:
            raise SchemaError(
                f"union {schema!r} is not supported: only null plus one type, "
                "because the JSON form carries no union tags"
            )
        inner = self.compile(branches[0], namespace)
        if len(schema) == 1:
            return inner
        expected = type_name(schema)

        def check_optional(v: Any) -> Any:
            if v is None:
                return None
            try:
                return inner(v)
            except Invalid as exc:
                if not exc.parts and exc.expected == type_name(branches[0]):
                    exc.expected = expected
                raise

        return check_optional

    def record(self, schema: dict[str, Any], namespace: str) -> Check:
        name = schema.get("name")
        if not isinstance(name, str):
            raise SchemaError(f"record without a name: {schema!r}")
        full = full_name(schema, namespace)
        ns = namespace_of(full)

        def check_by_name(v: Any) -> Any:
            return check_record(v)

        self.named.define(full, check_by_name)  # recursive types resolve through this
        fields: list[Field] = []
        tested: list[tuple[str, FieldConstraints, bool]] = []
        for f in schema.get("fields", []):
            constraint = FieldConstraints.of(f, full)
            field = self.field(f, full, ns, constraint)
            if constraint is not None:
                nullable = not field[3] or isinstance(f["type"], list)
                tested.append((field[0], constraint, nullable))
            fields.append(field)
        test = compile_test(tested) if tested else None
        check_record = record_check(
            name, fields, self.normalize, self.drop_unknown, self.max_string, test
        )
        self.named.define(full, check_record)
        return check_record

    def field(
        self, f: dict[str, Any], record: str, ns: str, constraint: FieldConstraints | None
    ) -> Field:
        """One field of ``record``: its check (with its constraints), and its default
        checked (and normalized)."""
        check = typed = self.compile(f["type"], ns)
        if constraint is not None:
            check = constrained_check(typed, constraint)
        has_default = "default" in f
        default = f.get("default")
        if has_default:
            # Avro: a union's default is a value of its first branch.
            first = f["type"][0] if isinstance(f["type"], list) else None
            default_check = check if first is None else self.compile(first, ns)
            try:
                default = run(default_check, copy.deepcopy(default), "default")
            except ValidationError as exc:
                raise SchemaError(
                    f"field {f['name']!r} of record {record}: default {exc}"
                ) from None
        leaf = f["type"] if f["type"] in LEAVES else None
        return (f["name"], leaf, check, not has_default, default, typed)

    def enum(self, schema: dict[str, Any], namespace: str) -> Check:
        symbols = frozenset(schema.get("symbols", []))
        expected = "one of " + ", ".join(schema.get("symbols", []))

        def check_enum(v: Any) -> Any:
            if type(v) is not str or v not in symbols:
                raise Invalid(expected, v)
            return v

        self.named.define(full_name(schema, namespace), check_enum)
        return check_enum

    def array(self, schema: dict[str, Any], namespace: str) -> Check:
        item = self.compile(schema.get("items"), namespace)
        if _zero_size(schema.get("items")):
            raise SchemaError(
                f"{type_name(schema)} is not supported: its elements take no bytes in Avro, "
                "so a few hostile bytes could claim billions of them"
            )
        max_array = self.max_array
        expected = f"array of {type_name(schema.get('items'))}"
        too_long = f"array of at most {max_array} elements"
        normalize = self.normalize

        def check_array(v: Any) -> Any:
            if type(v) is not list:
                raise Invalid(expected, v)
            if len(v) > max_array:
                raise Invalid(too_long, Summary(f"{len(v)} elements"))
            for i, element in enumerate(v):
                try:
                    checked = item(element)
                except Invalid as exc:
                    exc.parts.append(f"[{i}]")
                    raise
                if normalize and checked is not element:
                    v[i] = checked
            return v

        return check_array

    def map(self, schema: dict[str, Any], namespace: str) -> Check:
        value_check = self.compile(schema.get("values"), namespace)
        max_array, max_string = self.max_array, self.max_string
        expected = f"map of {type_name(schema.get('values'))}"
        normalize = self.normalize

        def check_map(v: Any) -> Any:
            if type(v) is not dict:
                raise Invalid(expected, v)
            if len(v) > max_array:
                raise Invalid(f"map of at most {max_array} entries", Summary(f"{len(v)} entries"))
            for key, element in v.items():
                if len(key) > max_string:
                    raise Invalid(f"keys of at most {max_string} characters", key)
                try:
                    checked = value_check(element)
                except Invalid as exc:
                    exc.parts.append(f"[{key!r}]")
                    raise
                if normalize and checked is not element:
                    v[key] = checked
            return v

        return check_map


def _zero_size(schema: Any) -> bool:
    """Whether values of ``schema`` (inline definitions) can encode in zero Avro bytes."""
    if schema == "null":
        return True
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            return all(_zero_size(f.get("type")) for f in schema.get("fields", []))
        if kind == "fixed":
            return schema.get("size") == 0
        if isinstance(kind, str | dict) and kind not in ("array", "map", "enum"):
            return _zero_size(kind)
    return False

"""Validators compiled once per schema into closures, run on every JSON event.

:func:`compile_validator` walks an Avro schema once and returns a function
that checks a decoded value against it: types, 32/64-bit integer ranges,
finite doubles, string and array lengths, enum symbols, required fields. It
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
import math
from collections.abc import Callable
from typing import Any

from .exceptions import MISSING, SchemaError, ValidationError

Check = Callable[[Any], Any]
"""A compiled validator: returns the (normalized) value or raises :class:`Invalid`."""

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
UNSUPPORTED = {
    "bytes": "bytes cannot travel in the JSON form",
    "fixed": "fixed cannot travel in the JSON form",
}


class Invalid(Exception):
    """Raised inside validators; :func:`run` turns it into a :class:`ValidationError`."""

    def __init__(self, expected: str, found: object) -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found
        self.parts: list[str] = []
        """Path segments, innermost first (``[2]``, ``.quantity``), added while unwinding."""

    def path(self, prefix: str) -> str:
        """The full path below ``prefix``."""
        return prefix + "".join(reversed(self.parts))


def run(check: Check, value: Any, prefix: str) -> Any:
    """Apply ``check`` to ``value``; a failure becomes a :class:`ValidationError` under prefix."""
    try:
        return check(value)
    except Invalid as exc:
        raise ValidationError(exc.path(prefix), exc.expected, exc.found) from None


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
        self.named: dict[str, Check] = {}

    def compile(self, schema: Any, namespace: str = "") -> Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.primitive(schema)
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            for key in (full, schema):
                if key in self.named:
                    return self.named[key]
            raise SchemaError(f"unknown type {schema!r}")
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
        max_string = self.max_string
        if kind == "string":
            too_long = f"string of at most {max_string} characters"

            def check_string(v: Any) -> Any:
                if type(v) is not str:
                    raise Invalid("string", v)
                if len(v) > max_string:
                    raise Invalid(too_long, v)
                return v

            return check_string
        if kind in ("int", "long"):
            low, high = INT_RANGE if kind == "int" else LONG_RANGE
            out_of_range = f"{kind} ({low}..{high})"

            def check_int(v: Any) -> Any:
                if type(v) is not int:
                    raise Invalid(kind, v)
                if not low <= v <= high:
                    raise Invalid(out_of_range, v)
                return v

            return check_int
        if kind in ("double", "float"):
            isfinite = math.isfinite
            if self.normalize:

                def check_double(v: Any) -> Any:
                    if type(v) is float:
                        if isfinite(v):
                            return v
                        raise Invalid(f"finite {kind}", v)
                    if type(v) is int:
                        f = float(v) if -(2**53) <= v <= 2**53 else math.nan
                        if isfinite(f):
                            return f
                    raise Invalid(kind, v)

                return check_double

            def check_double_strict(v: Any) -> Any:
                if type(v) is float:
                    if isfinite(v):
                        return v
                    raise Invalid(f"finite {kind}", v)
                if type(v) is int and -(2**53) <= v <= 2**53:
                    return v
                raise Invalid(kind, v)

            return check_double_strict
        if kind == "boolean":

            def check_boolean(v: Any) -> Any:
                if type(v) is not bool:
                    raise Invalid("boolean", v)
                return v

            return check_boolean
        if kind == "null":

            def check_null(v: Any) -> Any:
                if v is not None:
                    raise Invalid("null", v)
                return v

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
        ns = schema.get("namespace", namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        ns = full.rpartition(".")[0]
        # (name, leaf kind or None, check, required, default): the common leaf types
        # (string, int, long, double) are checked inline, without a call per field.
        fields: list[tuple[str, str | None, Check, bool, Any]] = []

        def check_by_name(v: Any) -> Any:
            return check_record(v)

        self.named[full] = check_by_name  # recursive types resolve through this
        for f in schema.get("fields", []):
            check = self.compile(f["type"], ns)
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
                        f"field {f['name']!r} of record {full}: default {exc}"
                    ) from None
            leaf = f["type"] if f["type"] in ("string", "int", "long", "double") else None
            fields.append((f["name"], leaf, check, not has_default, default))
        names = frozenset(f[0] for f in fields)
        n_fields = len(fields)
        expected_record = f"object (record {name})"
        known = ", ".join(f[0] for f in fields)
        normalize, drop_unknown = self.normalize, self.drop_unknown
        max_string = self.max_string
        int_low, int_high = INT_RANGE
        long_low, long_high = LONG_RANGE
        isfinite = math.isfinite
        mutable = (list, dict)
        # Fast path: required leaves grouped by type, checked in tight loops; any
        # doubt (a missing field, a wrong type, an int for a double) hands the whole
        # record to the ordered loop below, which normalizes or names the problem.
        req_str = tuple(f[0] for f in fields if f[3] and f[1] == "string")
        req_double = tuple(f[0] for f in fields if f[3] and f[1] == "double")
        req_int = tuple(f[0] for f in fields if f[3] and f[1] == "int")
        req_long = tuple(f[0] for f in fields if f[3] and f[1] == "long")
        rest = tuple((f[0], f[2], f[3], f[4]) for f in fields if not (f[3] and f[1]))

        def check_record(v: Any) -> Any:
            if type(v) is not dict:
                raise Invalid(expected_record, v)
            try:
                for fname in req_str:
                    value = v[fname]
                    if type(value) is not str or len(value) > max_string:
                        return check_fields(v)
                for fname in req_double:
                    value = v[fname]
                    if type(value) is not float or not isfinite(value):
                        return check_fields(v)
                for fname in req_int:
                    value = v[fname]
                    if type(value) is not int or not int_low <= value <= int_high:
                        return check_fields(v)
                for fname in req_long:
                    value = v[fname]
                    if type(value) is not int or not long_low <= value <= long_high:
                        return check_fields(v)
            except KeyError:
                return check_fields(v)
            size = len(v)
            missing = 0
            for fname, check, required, default in rest:
                value = v.get(fname, MISSING)
                if value is MISSING:
                    if required:
                        return check_fields(v)
                    missing += 1
                    if normalize:
                        v[fname] = copy.deepcopy(default) if type(default) in mutable else default
                    continue
                try:
                    checked = check(value)
                except Invalid as exc:
                    exc.parts.append("." + fname)
                    raise
                if normalize and checked is not value:
                    v[fname] = checked
            if size + missing != n_fields:
                unknown(v)
            return v

        def check_fields(v: Any) -> Any:
            """Every field in schema order: normalizes, or raises naming the first problem."""
            size = len(v)
            missing = 0
            for fname, _, check, required, default in fields:
                value = v.get(fname, MISSING)
                if value is MISSING:
                    if required:
                        exc = Invalid("a value (required field)", MISSING)
                        exc.parts.append("." + fname)
                        raise exc
                    missing += 1
                    if normalize:
                        v[fname] = copy.deepcopy(default) if type(default) in mutable else default
                    continue
                try:
                    checked = check(value)
                except Invalid as exc:
                    exc.parts.append("." + fname)
                    raise
                if normalize and checked is not value:
                    v[fname] = checked
            if size + missing != n_fields:
                unknown(v)
            return v

        def unknown(v: Any) -> None:
            extra = [k for k in v if k not in names]
            if normalize and drop_unknown:
                for k in extra:
                    del v[k]
            elif extra:
                exc = Invalid(f"only the fields of {name} ({known})", v[extra[0]])
                exc.parts.append("." + str(extra[0]))
                raise exc

        self.named[full] = check_record
        return check_record

    def enum(self, schema: dict[str, Any], namespace: str) -> Check:
        symbols = frozenset(schema.get("symbols", []))
        expected = "one of " + ", ".join(schema.get("symbols", []))

        def check_enum(v: Any) -> Any:
            if type(v) is not str or v not in symbols:
                raise Invalid(expected, v)
            return v

        name = schema.get("name", "")
        ns = schema.get("namespace", namespace)
        self.named[name if "." in name or not ns else f"{ns}.{name}"] = check_enum
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
                raise Invalid(too_long, _Summary(f"{len(v)} elements"))
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
                raise Invalid(f"map of at most {max_array} entries", _Summary(f"{len(v)} entries"))
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


class _Summary:
    """Stands in for a huge value in a message."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_PRIMITIVES = frozenset(["null", "boolean", "int", "long", "float", "double", "string", "bytes"])


def compile_finite_check(schema: Any) -> Check | None:
    """A check that only looks for NaN and infinities in the double/float fields of ``schema``.

    Avro binary can carry them, JSON cannot; everything else Avro guarantees
    by construction. Returns None when the schema has no such field. Named
    types referenced by name are looked up among those defined earlier.
    """
    return _finite(schema, {}, "")


def _finite(schema: Any, named: dict[str, Any], namespace: str) -> Check | None:
    if isinstance(schema, str):
        if schema in ("double", "float"):
            isfinite = math.isfinite

            def check_finite(v: Any) -> Any:
                if not isfinite(v):
                    raise Invalid(f"finite {schema}", v)
                return v

            return check_finite
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return named.get(full, named.get(schema))
    if isinstance(schema, list):
        inner = [c for c in (_finite(s, named, namespace) for s in schema) if c is not None]
        if not inner:
            return None
        (only,) = inner  # validators accept null plus one type only

        def check_optional(v: Any) -> Any:
            return v if v is None else only(v)

        return check_optional
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "record":
        name = schema.get("name", "")
        ns = schema.get("namespace", namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        ns = full.rpartition(".")[0]
        fields = [(f["name"], f["type"], _finite(f["type"], named, ns)) for f in schema["fields"]]
        doubles = tuple(n for n, t, c in fields if c is not None and t in ("double", "float"))
        nested = tuple((n, c) for n, t, c in fields if c is not None and n not in doubles)
        if not doubles and not nested:
            return None
        isfinite = math.isfinite

        def check_record(v: Any) -> Any:
            for fname in doubles:
                if not isfinite(v[fname]):
                    exc = Invalid("finite double", v[fname])
                    exc.parts.append("." + fname)
                    raise exc
            for fname, check in nested:
                try:
                    check(v[fname])
                except Invalid as exc:
                    exc.parts.append("." + fname)
                    raise
            return v

        named[full] = check_record
        return check_record
    if kind in ("array", "map"):
        item = _finite(schema.get("items" if kind == "array" else "values"), named, namespace)
        if item is None:
            return None
        if kind == "array":

            def check_array(v: Any) -> Any:
                for i, element in enumerate(v):
                    try:
                        item(element)
                    except Invalid as exc:
                        exc.parts.append(f"[{i}]")
                        raise
                return v

            return check_array

        def check_map(v: Any) -> Any:
            for key, element in v.items():
                try:
                    item(element)
                except Invalid as exc:
                    exc.parts.append(f"[{key!r}]")
                    raise
            return v

        return check_map
    if isinstance(kind, str | list | dict) and kind not in ("enum", "fixed"):
        return _finite(kind, named, namespace)
    return None

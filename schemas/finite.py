"""The checks of Avro-decoded data that Avro does not guarantee: finite numbers
and the fields' constraints.

Avro binary can carry NaN and the infinities in a double or float field, JSON
cannot; and no Avro type says that a quantity is positive or that a name has
no control characters (:mod:`schemas.constraints`). Everything else a
registered schema asks of a value, Avro guarantees by construction. So an
Avro record too small to break a length limit is checked only for these
(:class:`~schemas.codecs.EventCodec`), by a check compiled once per schema
that visits the double and float fields and the constrained fields alone (one
generated test per record for its constraints).
"""

from __future__ import annotations

import math
from typing import Any

from .avro_names import Scope, full_name, namespace_of
from .checks import Check, Invalid
from .constraints import FieldConstraints, broken_field, compile_record_check


def compile_finite_check(schema: Any) -> Check | None:
    """A check that only looks for NaN and infinities in the double/float fields of
    ``schema``, and tests its fields' constraints.

    Returns None when the schema has no such field. Named types referenced by
    name are looked up among those defined earlier.
    """
    return _finite(schema, Scope(), "")


def _finite(schema: Any, named: Scope[Check], namespace: str) -> Check | None:
    if isinstance(schema, str):
        if schema in ("double", "float"):
            return _finite_number(schema)
        return named.resolve(schema, namespace)
    if isinstance(schema, list):
        return _finite_union(schema, named, namespace)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "record":
        return _finite_record(schema, named, namespace)
    if kind in ("array", "map"):
        item = _finite(schema.get("items" if kind == "array" else "values"), named, namespace)
        if item is None:
            return None
        return _finite_array(item) if kind == "array" else _finite_map(item)
    if isinstance(kind, str | list | dict) and kind not in ("enum", "fixed"):
        return _finite(kind, named, namespace)
    return None


def _finite_number(kind: str) -> Check:
    isfinite = math.isfinite

    def check_finite(v: Any) -> Any:
        if not isfinite(v):
            raise Invalid(f"finite {kind}", v)
        return v

    return check_finite


def _finite_union(schema: list[Any], named: Scope[Check], namespace: str) -> Check | None:
    inner = [c for c in (_finite(s, named, namespace) for s in schema) if c is not None]
    if not inner:
        return None
    (only,) = inner  # validators accept null plus one type only

    def check_optional(v: Any) -> Any:
        return v if v is None else only(v)

    return check_optional


def _finite_record(schema: dict[str, Any], named: Scope[Check], namespace: str) -> Check | None:
    full = full_name(schema, namespace)
    ns = namespace_of(full)
    fields = [(f["name"], f["type"], _finite(f["type"], named, ns)) for f in schema["fields"]]
    doubles = tuple(n for n, t, c in fields if c is not None and t in ("double", "float"))
    nested = tuple((n, c) for n, t, c in fields if c is not None and n not in doubles)
    constrained = [
        (f["name"], constraint, isinstance(f["type"], list))
        for f in schema["fields"]
        if (constraint := FieldConstraints.of(f, full)) is not None
    ]
    if not doubles and not nested and not constrained:
        return None

    def fail(v: Any) -> Invalid:
        for fname in doubles:
            if not math.isfinite(v[fname]):
                exc = Invalid("finite double", v[fname])
                exc.parts.append("." + fname)
                return exc
        return broken_field(constrained, v)

    check_record = compile_record_check(constrained, doubles, nested, fail)
    named.define(full, check_record)
    return check_record


def _finite_array(item: Check) -> Check:
    def check_array(v: Any) -> Any:
        for i, element in enumerate(v):
            try:
                item(element)
            except Invalid as exc:
                exc.parts.append(f"[{i}]")
                raise
        return v

    return check_array


def _finite_map(item: Check) -> Check:
    def check_map(v: Any) -> Any:
        for key, element in v.items():
            try:
                item(element)
            except Invalid as exc:
                exc.parts.append(f"[{key!r}]")
                raise
        return v

    return check_map

"""The compiled checks: closures that test one decoded value against one type.

:mod:`schemas.validate` walks a schema once and puts these together; a check
takes a value and returns it (normalized: see ``normalize``), or raises
:class:`Invalid`, which :func:`run` turns into a
:class:`~schemas.exceptions.ValidationError` naming the path. They read their
constants from closure cells, never from attributes or globals: they run on
every field of every JSON event.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from .exceptions import MISSING, ValidationError

Check = Callable[[Any], Any]
"""A compiled validator: returns the (normalized) value or raises :class:`Invalid`."""

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
LEAVES = ("string", "int", "long", "double")
"""Field types a record checks inline, without a call per field."""

Field = tuple[str, str | None, Check, bool, Any, Check]
"""A compiled record field: name, leaf kind (or None), check, required, default,
and the check of its type alone.

The check includes the field's constraints (:mod:`schemas.constraints`); on the
fast path a record checks the types alone, then its fields' constraints with
one generated ``test``."""


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


def string_check(max_string: int) -> Check:
    too_long = f"string of at most {max_string} characters"

    def check_string(v: Any) -> Any:
        if type(v) is not str:
            raise Invalid("string", v)
        if len(v) > max_string:
            raise Invalid(too_long, v)
        return v

    return check_string


def int_check(kind: str) -> Check:
    low, high = INT_RANGE if kind == "int" else LONG_RANGE
    out_of_range = f"{kind} ({low}..{high})"

    def check_int(v: Any) -> Any:
        if type(v) is not int:
            raise Invalid(kind, v)
        if not low <= v <= high:
            raise Invalid(out_of_range, v)
        return v

    return check_int


def double_check(kind: str, normalize: bool) -> Check:
    isfinite = math.isfinite
    if normalize:

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


def check_boolean(v: Any) -> Any:
    if type(v) is not bool:
        raise Invalid("boolean", v)
    return v


def check_null(v: Any) -> Any:
    if v is not None:
        raise Invalid("null", v)
    return v


def record_check(
    name: str,
    fields: list[Field],
    normalize: bool,
    drop_unknown: bool,
    max_string: int,
    test: Callable[[Any], bool] | None = None,
) -> Check:
    """The check of a record whose fields are compiled.

    ``test`` tests the constraints of every constrained field, once the fast
    path has checked (and normalized) the types; when it fails, the ordered
    loop names the field and the rule.

    Kept in one piece (about 70 lines) because it is the hot path of every JSON
    decode: the fast path below reads its constants from closure cells, with
    no attribute or global look-up per field.
    """
    n_fields = len(fields)
    expected_record = f"object (record {name})"
    unknown = _unknown_fields(name, fields, normalize, drop_unknown)
    check_fields = _ordered_check(fields, normalize, unknown)
    int_low, int_high = INT_RANGE
    long_low, long_high = LONG_RANGE
    isfinite = math.isfinite
    mutable = (list, dict)
    # Fast path: required leaves grouped by type, checked in tight loops; any
    # doubt (a missing field, a wrong type, an int for a double) hands the whole
    # record to the ordered loop, which normalizes or names the problem.
    req_str, req_double, req_int, req_long = (
        tuple(f[0] for f in fields if f[3] and f[1] == leaf)
        for leaf in ("string", "double", "int", "long")
    )
    rest = tuple((f[0], f[5], f[3], f[4]) for f in fields if not (f[3] and f[1]))

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
        if test is not None and not test(v):
            return check_fields(v)  # names the field and the rule
        return v

    return check_record


def _ordered_check(fields: list[Field], normalize: bool, unknown: Callable[[Any], None]) -> Check:
    """Every field in schema order: normalizes, or raises naming the first problem."""
    n_fields = len(fields)
    mutable = (list, dict)

    def check_fields(v: Any) -> Any:
        size = len(v)
        missing = 0
        for fname, _, check, required, default, _ in fields:
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

    return check_fields


def _unknown_fields(
    name: str, fields: list[Field], normalize: bool, drop_unknown: bool
) -> Callable[[Any], None]:
    """What to do with a record holding fields the schema lacks: drop them, or refuse."""
    names = frozenset(f[0] for f in fields)
    known = ", ".join(f[0] for f in fields)

    def unknown(v: Any) -> None:
        extra = [k for k in v if k not in names]
        if normalize and drop_unknown:
            for k in extra:
                del v[k]
        elif extra:
            exc = Invalid(f"only the fields of {name} ({known})", v[extra[0]])
            exc.parts.append("." + str(extra[0]))
            raise exc

    return unknown


class Summary:
    """Stands in for a huge value in a message."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

"""Field constraints: the value rules of the event contract, declared beside the types.

A payload field in a ``.avsc`` file may carry a ``constraints`` object::

    {"name": "quantity", "type": "int", "constraints": {"exclusiveMinimum": 0, "maximum": 10000}}

The keys are JSON Schema's (so OpenAPI shows the command API's the same way),
plus ``noControl``:

==========================================  ===================  ==================================
key                                         field type           the value must be
==========================================  ===================  ==================================
``minimum`` / ``maximum``                   int, long, double    ``>=`` / ``<=`` the number
``exclusiveMinimum`` / ``exclusiveMaximum`` int, long, double    ``>`` / ``<`` the number
``minLength`` / ``maxLength``               string               that many characters at least/most
``pattern``                                 string               matched whole by the regular
                                                                 expression (written ``^...$``)
``format``: ``"email"``                     string               ``name@domain.tld``, no spaces
``noControl``: ``true``                     string               free of control characters
                                                                 (Unicode Cc: NUL, ESC, line breaks)
``minItems`` / ``maxItems``                 array                that many elements at least/most
==========================================  ===================  ==================================

On a ``["null", T]`` field they apply to a value that is not null.
Constraints are annotations: the registry's fingerprints leave them out (as
``doc`` and ``personal``), so adding one keeps the schema's id, and Avro
never sees them. Every validator compiled from a schema enforces them
(:mod:`schemas.validate` for JSON and for encoding, :mod:`schemas.finite` for
small Avro records): a record that breaks one is refused with a
:class:`~schemas.exceptions.ValidationError` naming the field and the rule,
and the worker dead-letters it. The command API builds its request models
from the same constraints (``api/models.py``).

**Personal fields** (``"personal": true``) travel encrypted
(:mod:`schemas.personal`): a value in the ``pii:v1:`` form passes when it is
a well-formed ciphertext no longer than the encryption of ``maxLength``
characters; the plaintext rules are checked by the writer (the command API)
before it encrypts, since a decoder holds no keys. A personal value in
plaintext (an older producer) is checked against every rule, and a refused
personal value is never shown in the error message.

This module turns a field's constraints into Python source for the compiled
validators (one generated test per record, no call per rule) and into the
messages that name the rule a value breaks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .checks import Check, Invalid, Summary
from .exceptions import SchemaError

CONSTRAINTS = "constraints"
"""The attribute of a payload field that holds its constraints."""
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Unicode's control characters (category Cc): C0 codes, DEL, C1 codes."""
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
"""``format: email``: something, ``@``, a domain with a dot; no spaces."""
TOKEN_RE = re.compile(r"pii:v1:[0-9a-f]{16}:[A-Za-z0-9_-]{16}:[A-Za-z0-9_-]{22,}")
"""A ciphertext of :mod:`schemas.personal`: key id, 12-byte nonce, sealed text (tag included)."""
TOKEN_PREFIX = "pii:v1:"

NUMBER_KEYS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
STRING_KEYS = ("minLength", "maxLength", "pattern", "format", "noControl")
ARRAY_KEYS = ("minItems", "maxItems")
KINDS = {"number": NUMBER_KEYS, "string": STRING_KEYS, "array": ARRAY_KEYS}
NUMBERS = ("int", "long", "double", "float")
FORMATS = {"email": EMAIL_PATTERN}
LOWER = {"minimum": "<=", "exclusiveMinimum": "<"}
UPPER = {"maximum": "<=", "exclusiveMaximum": "<"}
REMEMBERED = 4096
"""Strings remembered per field as passing its regular expression (see ``_statements``)."""
ORDER = ("noControl", *NUMBER_KEYS, "minLength", "maxLength", "format", "pattern", *ARRAY_KEYS)
"""The order rules are named in: a control character first, the pattern last."""


def cipher_length(max_length: int) -> int:
    """The longest ``pii:v1:`` value that encrypts ``max_length`` characters (UTF-8)."""
    sealed = 4 * max_length + 16  # four bytes per character at most, and the GCM tag
    return len(TOKEN_PREFIX) + 16 + 1 + 16 + 1 + -(-sealed * 4 // 3)


@dataclass(frozen=True)
class FieldConstraints:
    """The constraints of one field, checked against its type when the schema is read."""

    field: str
    """The field's name."""
    kind: str
    """``number``, ``string`` or ``array``."""
    spec: Mapping[str, Any]
    """The ``constraints`` object as written."""
    personal: bool = False
    """Whether the field is personal (accepts its ciphertext form)."""
    floating: bool = False
    """Whether the field is a double or float (its bounds are compared as floats)."""

    @classmethod
    def of(cls, field: Mapping[str, Any], where: str) -> FieldConstraints | None:
        """The constraints of a payload field, or None; :class:`SchemaError` when malformed."""
        spec = field.get(CONSTRAINTS)
        if spec is None:
            return None
        name = field.get("name", "?")
        if not isinstance(spec, dict) or not spec:
            raise SchemaError(f"{where}, field {name!r}: constraints must be a non-empty object")
        kind = _kind(field.get("type"))
        if kind is None:
            raise SchemaError(
                f"{where}, field {name!r}: constraints apply to numbers, strings and arrays "
                f"(or null plus one of them), not to {field.get('type')!r}"
            )
        for key, value in spec.items():
            problem = _problem(kind, key, value)
            if problem is not None:
                raise SchemaError(f"{where}, field {name!r}: constraint {key!r} {problem}")
        floating = _kind(field.get("type"), primitive=True) in ("double", "float")
        return cls(str(name), kind, dict(spec), field.get("personal") is True, floating)

    def condition(self, x: str, env: dict[str, Any]) -> str:
        """Python source of a test that value ``x`` (of the field's type, not null) passes.

        Constants go into ``env`` under fresh names.
        """
        plain = " and ".join(self._tests(x, env)) or "True"
        if not (self.personal and self.kind == "string"):
            return plain
        token = _const(env, re.compile(TOKEN_RE.pattern[len(TOKEN_PREFIX) :]).fullmatch)
        most = _const(env, cipher_length(self.spec.get("maxLength", 10**9)))
        cipher = f"len({x}) <= {most} and {token}({x}, {len(TOKEN_PREFIX)}) is not None"
        return f"(({cipher}) if {x}.startswith({TOKEN_PREFIX!r}) else ({plain}))"

    def _tests(self, x: str, env: dict[str, Any]) -> list[str]:
        spec, out = self.spec, []
        number = float if self.floating else (lambda n: n)  # no int-float comparisons
        below = [(op, _const(env, number(spec[k]))) for k, op in LOWER.items() if k in spec]
        above = [(op, _const(env, number(spec[k]))) for k, op in UPPER.items() if k in spec]
        out += _range(x, below, above)
        size = f"len({x})"
        below = [("<=", _const(env, spec[k])) for k in ("minLength", "minItems") if k in spec]
        above = [("<=", _const(env, spec[k])) for k in ("maxLength", "maxItems") if k in spec]
        out += _range(size, below, above)
        for key in ("pattern", "format"):
            if key in spec:
                regex = _unanchored(spec[key] if key == "pattern" else FORMATS[spec[key]])
                out.append(f"{_const(env, re.compile(regex).fullmatch)}({x}) is not None")
        if spec.get("noControl"):
            out.append(f"({x}.isprintable() or {_const(env, CONTROL_RE.search)}({x}) is None)")
        return out

    def broken(self, value: Any) -> tuple[str, object] | None:
        """The rule ``value`` breaks, as (expected, what to show), or None when it passes."""
        shown: object = value
        if self.personal:
            shown = Summary(f"a personal value of {len(value)} characters (not shown)")
            if value.startswith(TOKEN_PREFIX):
                most = cipher_length(self.spec.get("maxLength", 10**9))
                if TOKEN_RE.fullmatch(value) is None or len(value) > most:
                    return (
                        "an encrypted value pii:v1:<keyId>:<nonce>:<ciphertext> of at most "
                        f"{most} characters (personal field)",
                        shown,
                    )
                return None
        for key in ORDER:
            if key not in self.spec:
                continue
            expected = _breaks(key, self.spec[key], value)
            if expected is not None:
                if key == "noControl":
                    found = CONTROL_RE.search(value)
                    assert found is not None
                    at = f"U+{ord(found.group()):04X} at position {found.start()}"
                    shown = shown if self.personal else Summary(ascii(value[:80]))
                    return f"{expected}, found {at}", shown
                return expected, shown
        return None


def compile_test(conditions: list[tuple[str, FieldConstraints, bool]]) -> Callable[[Any], bool]:
    """One function testing a record ``v``: its ``(name, constraints, optional)`` fields.

    The fields hold values of their type (checked before); an optional one may be
    None or, before defaults are filled in, absent. Generated once per record so
    that a record's constraints cost one call.
    """
    env: dict[str, Any] = {}
    lines = ["def test(v):"]
    for n, (name, constraint, optional) in enumerate(conditions):
        x = f"x{n}"
        lines.append(f"    {x} = v.get({name!r})" if optional else f"    {x} = v[{name!r}]")
        lines += _statements(constraint, x, optional, env)
    lines.append("    return True")
    return _compiled(lines, env)


def compile_value_test(constraint: FieldConstraints) -> Callable[[Any], bool]:
    """A test of one value of the field (of its type, not null)."""
    env: dict[str, Any] = {}
    return _compiled(
        ["def test(x):", *_statements(constraint, "x", False, env), "    return True"], env
    )


def _statements(
    constraint: FieldConstraints,
    x: str,
    optional: bool,
    env: dict[str, Any],
    failure: str = "return False",
) -> list[str]:
    """The lines that run ``failure`` when ``x`` breaks ``constraint``.

    A string passed through a regular expression is remembered (up to
    :data:`REMEMBERED` per field, then forgotten at once): ids, SKUs and
    currencies recur, and a set look-up costs a tenth of a match. Personal
    values are never remembered (each ciphertext is new, and personal).
    """
    condition = constraint.condition(x, env)
    guard = f"{x} is not None and " if optional else ""
    spec = constraint.spec
    if constraint.personal or not ("pattern" in spec or "format" in spec):
        return [f"    if {guard}not ({condition}):", f"        {failure}"]
    known = _const(env, set())
    return [
        f"    if {guard}{x} not in {known}:",
        f"        if not ({condition}):",
        f"            {failure}",
        f"        if len({known}) >= {REMEMBERED}:",
        f"            {known}.clear()",
        f"        {known}.add({x})",
    ]


def _compiled(lines: list[str], env: dict[str, Any], name: str = "test") -> Any:
    exec(compile("\n".join(lines), f"<constraints {name}>", "exec"), env)
    return env[name]


def compile_record_check(
    conditions: list[tuple[str, FieldConstraints, bool]],
    finite: tuple[str, ...],
    nested: tuple[tuple[str, Check], ...],
    fail: Callable[[Any], Invalid],
) -> Check:
    """One generated check of an Avro-decoded record ``v`` (its values have their types):
    the ``finite`` fields are neither NaN nor infinite, the ``nested`` checks pass (the
    field is added to the path of their errors), the ``conditions`` hold; else it
    raises ``fail(v)``, which names the first problem. No loop, no call per field.
    """
    env: dict[str, Any] = {"isfinite": math.isfinite, "Invalid": Invalid, "fail": fail}
    lines = ["def check_record(v):"]
    if finite:
        tests = " and ".join(f"isfinite(v[{name!r}])" for name in finite)
        lines += [f"    if not ({tests}):", "        raise fail(v)"]
    for n, (name, inner) in enumerate(nested):
        env[f"n{n}"] = inner
        lines += [
            "    try:",
            f"        n{n}(v[{name!r}])",
            "    except Invalid as exc:",
            f"        exc.parts.append({'.' + name!r})",
            "        raise",
        ]
    for n, (name, constraint, optional) in enumerate(conditions):
        x = f"x{n}"
        lines.append(f"    {x} = v.get({name!r})" if optional else f"    {x} = v[{name!r}]")
        lines += _statements(constraint, x, optional, env, "raise fail(v)")
    lines.append("    return v")
    check: Check = _compiled(lines, env, "check_record")
    return check


def constrained_check(check: Check, constraint: FieldConstraints) -> Check:
    """``check`` (the field's type) followed by its constraints, naming the rule broken."""
    test = compile_value_test(constraint)

    def check_constrained(v: Any) -> Any:
        v = check(v)
        if v is not None and not test(v):
            raise _invalid(constraint, v)
        return v

    return check_constrained


def broken_field(fields: list[tuple[str, FieldConstraints, bool]], v: Any) -> Invalid:
    """The error naming the first of ``fields`` of record ``v`` that breaks its
    constraints (after :func:`compile_test` of them said one does)."""
    for name, constraint, _ in fields:
        value = v.get(name)
        if value is not None and constraint.broken(value) is not None:
            exc = _invalid(constraint, value)
            exc.parts.append("." + name)
            return exc
    return Invalid("a record whose fields pass their constraints", v)  # pragma: no cover


def _invalid(constraint: FieldConstraints, value: Any) -> Invalid:
    broken = constraint.broken(value)
    if broken is None:  # pragma: no cover - the test and the rules agree
        return Invalid("a value that passes its constraints", value)
    return Invalid(*broken)


def payload_constraints(payload: Mapping[str, Any], where: str = "") -> dict[str, FieldConstraints]:
    """Path → constraints of every constrained field of a payload schema.

    Paths name fields as the command API does: ``orderId``, ``items[].quantity``
    (records inside arrays and optional fields included).
    """
    found: dict[str, FieldConstraints] = {}
    _collect(payload, "", where or str(payload.get("name")), found)
    return found


def _collect(schema: Any, prefix: str, where: str, found: dict[str, FieldConstraints]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, prefix, where, found)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "array":
        _collect(schema.get("items"), prefix + "[]", where, found)
    elif schema.get("type") == "record":
        for f in schema.get("fields", []):
            path = f"{prefix}.{f['name']}" if prefix else f["name"]
            constraint = FieldConstraints.of(f, where)
            if constraint is not None:
                found[path] = constraint
            _collect(f.get("type"), path, where, found)


def _kind(schema: Any, primitive: bool = False) -> str | None:
    """``number``, ``string`` or ``array`` (or the type's own name), None for other types."""
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        return _kind(branches[0], primitive) if len(branches) == 1 else None
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "array":
            return "array"
        return _kind(kind, primitive) if isinstance(kind, str) else None
    if schema in NUMBERS:
        return schema if primitive else "number"
    return "string" if schema == "string" else None


def _problem(kind: str, key: str, value: Any) -> str | None:
    """What is wrong with one constraint of a field of ``kind``, or None."""
    if key not in KINDS[kind]:
        known = ", ".join(KINDS[kind])
        return f"does not apply to a {kind} (for a {kind}: {known})"
    if key in NUMBER_KEYS:
        ok = type(value) in (int, float) and value == value and abs(value) != float("inf")
        return None if ok else f"must be a finite number, got {value!r}"
    if key in ("minLength", "maxLength", "minItems", "maxItems"):
        ok = type(value) is int and value >= 0
        return None if ok else f"must be an integer >= 0, got {value!r}"
    if key == "noControl":
        return None if value is True else "must be true (leave it out to allow them)"
    if key == "format":
        return None if value in FORMATS else f"must be one of {', '.join(FORMATS)}, got {value!r}"
    if not isinstance(value, str) or not value.startswith("^") or not value.endswith("$"):
        return f"must be a regular expression written ^...$, got {value!r}"
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    return None


def _breaks(key: str, rule: Any, value: Any) -> str | None:
    """How ``value`` breaks the constraint ``key: rule`` (the expected text), or None."""
    if key == "minimum" and not value >= rule:
        return f"a number >= {rule} (minimum)"
    if key == "exclusiveMinimum" and not value > rule:
        return f"a number > {rule} (exclusiveMinimum)"
    if key == "maximum" and not value <= rule:
        return f"a number <= {rule} (maximum)"
    if key == "exclusiveMaximum" and not value < rule:
        return f"a number < {rule} (exclusiveMaximum)"
    if key == "minLength" and len(value) < rule:
        return f"at least {rule} characters (minLength)"
    if key == "maxLength" and len(value) > rule:
        return f"at most {rule} characters (maxLength)"
    if key == "minItems" and len(value) < rule:
        return f"at least {rule} element(s) (minItems)"
    if key == "maxItems" and len(value) > rule:
        return f"at most {rule} element(s) (maxItems)"
    if key == "pattern" and re.fullmatch(rule, value) is None:
        return f"a string matching {rule} (pattern)"
    if key == "format" and re.fullmatch(FORMATS[rule], value) is None:
        return f"an e-mail address name@domain.tld (format {rule})"
    if key == "noControl" and CONTROL_RE.search(value) is not None:
        return "text without control characters (noControl)"
    return None


def _range(x: str, below: list[tuple[str, str]], above: list[tuple[str, str]]) -> list[str]:
    """Source of bound tests, chained (``c0 < x <= c1``) when there is one bound each side."""
    if len(below) == 1 and len(above) == 1:
        return [f"{below[0][1]} {below[0][0]} {x} {above[0][0]} {above[0][1]}"]
    return [f"{c} {op} {x}" for op, c in below] + [f"{x} {op} {c}" for op, c in above]


def _unanchored(pattern: str) -> str:
    """``^...$`` without the anchors, which ``fullmatch`` makes redundant (and slower)."""
    return f"(?:{pattern[1:-1]})" if not pattern.endswith("\\$") else pattern[1:]


def _const(env: dict[str, Any], value: Any) -> str:
    name = f"c{len(env)}"
    env[name] = value
    return name

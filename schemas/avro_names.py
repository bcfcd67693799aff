"""Avro named types: full names, namespaces and the lookup of a name reference.

The one resolver of named types (records, enums, fixed) behind the
validators (:mod:`schemas.validate`, :mod:`schemas.finite`), the binary
decoders (:mod:`schemas.avro_reader`) and the compatibility check
(:mod:`schemas.compat`), so that all of them agree on what a name means.
The rules, from the Avro specification ("Names"):

- a definition's full name is its ``name`` when that contains a dot;
  otherwise its ``namespace`` attribute (when present, even empty) or else
  the namespace of the enclosing definition, a dot, and its ``name``;
- the namespace of a definition's own fields and items is that of its full
  name (everything before the last dot);
- a reference to a named type (a string that is not a primitive type) is
  looked up qualified by the enclosing namespace first, then as written.

A :class:`Scope` holds what a walk of a schema has defined so far (Avro wants
a type defined before it is referenced); :func:`collect` gathers every
definition of a schema at once, for a walk that may meet references first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PRIMITIVES = frozenset(["null", "boolean", "int", "long", "float", "double", "string", "bytes"])
"""Avro's primitive type names: never a reference to a named type."""
NAMED = frozenset(["record", "enum", "fixed"])
"""The kinds of type that have a name."""


def qualify(name: str, namespace: str) -> str:
    """The full name of ``name`` written in ``namespace`` (unchanged when it has a dot)."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def full_name(schema: dict[str, Any], namespace: str) -> str:
    """The full name of the named type ``schema`` defined inside ``namespace``."""
    return qualify(schema.get("name", ""), schema.get("namespace", namespace))


def namespace_of(full: str) -> str:
    """The namespace a full name sets for what its definition contains."""
    return full.rpartition(".")[0]


def short_name(name: str) -> str:
    """The name without its namespace: what Avro compares when it matches two types."""
    return name.rpartition(".")[2]


def is_reference(schema: Any) -> bool:
    """Whether ``schema`` is a reference to a named type: a non-primitive type name."""
    return isinstance(schema, str) and schema not in PRIMITIVES


class Scope(Generic[T]):
    """The named types defined so far in one schema, by full name, each with a value.

    The value is what the walk needs of a type: a compiled check, a decoder,
    the definition itself.
    """

    __slots__ = ("_types",)

    def __init__(self) -> None:
        self._types: dict[str, T] = {}

    def define(self, full: str, value: T) -> None:
        """Give ``full`` its value (replacing a placeholder set while compiling it)."""
        self._types[full] = value

    def define_once(self, full: str, value: T) -> None:
        """Give ``full`` its value unless it has one: the first definition counts."""
        self._types.setdefault(full, value)

    def resolve(self, reference: str, namespace: str) -> T | None:
        """The value of the type ``reference`` names inside ``namespace``; None if undefined."""
        types = self._types
        if "." not in reference and namespace:
            found = types.get(f"{namespace}.{reference}")
            if found is not None:
                return found
        return types.get(reference)

    def __contains__(self, full: object) -> bool:
        return full in self._types

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)


Definition = tuple[dict[str, Any], str]
"""A named type's definition and the namespace of what it contains."""


def collect(schema: Any, namespace: str = "") -> Scope[Definition]:
    """Every named type defined anywhere in ``schema``, by full name, with its namespace."""
    scope: Scope[Definition] = Scope()
    _collect(schema, namespace, scope)
    return scope


def _collect(schema: Any, namespace: str, scope: Scope[Definition]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, scope)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            full = full_name(schema, namespace)
            inner = namespace_of(full)
            scope.define(full, (schema, inner))
            for f in schema.get("fields", []):
                _collect(f.get("type"), inner, scope)
        elif kind == "array":
            _collect(schema.get("items"), namespace, scope)
        elif kind == "map":
            _collect(schema.get("values"), namespace, scope)
        elif isinstance(kind, dict | list):
            _collect(kind, namespace, scope)

"""The event contract as JSON Schema (draft 2020-12), one document per registered event.

``eventide schemas export --format jsonschema`` writes them, so that producers
in any language can validate an event's JSON form before they publish it. Each
document describes the whole envelope (``id``, ``name``, ``timestamp``,
``version``, ``source``, ``correlationId``, ``causationId``, ``data``) with
``data`` translated from the event's Avro payload schema:

- Avro types: ``int`` and ``long`` are integers within 32 and 64 bits,
  ``double`` and ``float`` numbers, ``["null", T]`` is ``T`` or null, enums
  list their symbols, records are objects whose fields without a default are
  required and which allow no other field (as the worker's decoder);
- the fields' constraints (:mod:`schemas.constraints`) map to the JSON Schema
  keywords they were named after; ``noControl`` and ``format: email`` become
  patterns; a personal field also accepts its ``pii:v1:`` ciphertext;
- the decoder's limits (EVENTIDE_MAX_STRING_LENGTH, EVENTIDE_MAX_ARRAY_LENGTH)
  bound every string and array that has no tighter bound.

The worker's decoder stays the authority (it also bounds the record's size and
nesting, and reads newer minor versions); an event these schemas accept is one
it accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .avro_names import Scope, full_name, namespace_of
from .constraints import FORMATS, TOKEN_RE, cipher_length
from .exceptions import SchemaError
from .limits import Limits
from .registry import Registry, SchemaEntry

DIALECT = "https://json-schema.org/draft/2020-12/schema"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
NO_CONTROL = r"^[^\u0000-\u001f\u007f-\u009f]*$"
"""A string free of Unicode control characters (the ``noControl`` constraint,
:data:`schemas.constraints.CONTROL_RE`), in the escapes every regex dialect reads."""
TIMESTAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}([.,][0-9]+)?)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?$"
)
"""ISO-8601 dates and times, as the decoder reads them (RFC 3339 with ``Z`` is what
producers should write: ``2026-11-27T15:00:00.000Z``)."""
NUMBER_KEYWORDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
SIZE_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")


def schema_id(entry: SchemaEntry) -> str:
    """The ``$id`` of an event's document."""
    return f"urn:eventide:event:{entry.name}:{entry.version}"


def file_name(entry: SchemaEntry) -> str:
    """Where ``schemas export`` writes an event's document."""
    return f"{entry.name}-{entry.version}.schema.json"


def event_schema(entry: SchemaEntry, limits: Limits | None = None) -> dict[str, Any]:
    """The JSON Schema of one event's JSON form (envelope and data) at its version."""
    limits = limits or Limits()
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_string_length}
    optional_text = {"anyOf": [{"type": "null"}, text]}
    major, minor = entry.major, entry.minor
    return {
        "$schema": DIALECT,
        "$id": schema_id(entry),
        "title": f"{entry.name} {entry.version}",
        "description": entry.payload.get("doc", f"The {entry.name} event."),
        "type": "object",
        "properties": {
            "id": {**text, "description": "Unique id of this event (a uuid)."},
            "name": {"const": entry.name},
            "timestamp": {
                "type": "string",
                "maxLength": 64,
                "pattern": TIMESTAMP,
                "description": "When the fact happened, ISO-8601 UTC, e.g. "
                "2026-11-27T15:00:00.000Z.",
            },
            "version": {
                "type": "string",
                "pattern": rf"^{major}\.{minor}(\.(0|[1-9][0-9]{{0,8}}))?$",
                "description": f"{major}.{minor}.<patch>: the version of the payload schema.",
            },
            "source": {**text, "description": "The service that published the event."},
            "correlationId": {**optional_text, "description": "Id of the business flow."},
            "causationId": {**optional_text, "description": "Id of the event that caused it."},
            "data": _Translator(limits).record(entry.payload, ""),
        },
        "required": ["id", "name", "timestamp", "version", "source", "data"],
    }


def all_schemas(registry: Registry, limits: Limits | None = None) -> dict[str, dict[str, Any]]:
    """File name → document, for every registered event version."""
    return {file_name(e): event_schema(e, limits) for e in registry}


class _Translator:
    """Avro payload schema → JSON Schema, named types resolved by inlining."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.named: Scope[dict[str, Any]] = Scope()

    def type_of(self, schema: Any, namespace: str, field: Mapping[str, Any]) -> Any:
        if isinstance(schema, list):
            branches = [self.type_of(b, namespace, field) for b in schema]
            return branches[0] if len(branches) == 1 else {"anyOf": branches}
        if isinstance(schema, str):
            return self._primitive(schema, namespace, field)
        if not isinstance(schema, dict):
            raise SchemaError(f"not an Avro schema: {schema!r}")
        kind = schema.get("type")
        if kind == "record":
            return self.record(schema, namespace)
        if kind == "enum":
            out = {"type": "string", "enum": list(schema["symbols"])}
            self.named.define(full_name(schema, namespace), out)
            return out
        if kind == "array":
            items = self.type_of(schema["items"], namespace, {})
            return self._bounded(
                {"type": "array", "items": items, "maxItems": self.limits.max_array_length},
                field,
                "array",
            )
        if kind == "map":
            values = self.type_of(schema["values"], namespace, {})
            return {"type": "object", "additionalProperties": values}
        return self._primitive(str(kind), namespace, field)

    def record(self, schema: dict[str, Any], outer: str) -> dict[str, Any]:
        full = full_name(schema, outer)
        namespace = namespace_of(full)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in schema["fields"]:
            prop = self.type_of(f["type"], namespace, f)
            if "doc" in f:
                prop = {**prop, "description": f["doc"]}
            properties[f["name"]] = prop
            if "default" not in f:
                required.append(f["name"])
        out: dict[str, Any] = {"type": "object", "properties": properties}
        out["required"] = required
        out["additionalProperties"] = False
        if "doc" in schema:
            out["description"] = schema["doc"]
        self.named.define(full, out)
        return out

    def _primitive(self, kind: str, namespace: str, field: Mapping[str, Any]) -> Any:
        if kind == "null":
            return {"type": "null"}
        if kind == "boolean":
            return {"type": "boolean"}
        if kind in ("int", "long"):
            low, high = INT32 if kind == "int" else INT64
            whole = {"type": "integer", "minimum": low, "maximum": high}
            return self._bounded(whole, field, "number")
        if kind in ("double", "float"):
            return self._bounded({"type": "number"}, field, "number")
        if kind == "string":
            text = {"type": "string", "maxLength": self.limits.max_string_length}
            return self._bounded(text, field, "string")
        if kind in ("bytes", "fixed"):
            raise SchemaError(f"{kind} cannot travel in the JSON form")
        named = self.named.resolve(kind, namespace)
        if named is None:
            raise SchemaError(f"unknown Avro type {kind!r}")
        return named

    def _bounded(self, out: dict[str, Any], field: Mapping[str, Any], kind: str) -> dict[str, Any]:
        """``out`` with the field's constraints, if they are of ``kind``."""
        spec = field.get("constraints")
        if not spec:
            return out
        out = dict(out)
        patterns: list[str] = []
        for key, value in spec.items():
            if key in SIZE_KEYWORDS or (key in NUMBER_KEYWORDS and kind == "number"):
                out[key] = value
            elif key == "pattern":
                patterns.append(value)
            elif key == "format":
                patterns.append(FORMATS[value])
                out["format"] = value
            elif key == "noControl" and value:
                patterns.append(NO_CONTROL)
        if len(patterns) == 1:
            out["pattern"] = patterns[0]
        elif patterns:
            out["allOf"] = [{"pattern": p} for p in patterns]
        if field.get("personal") and kind == "string":
            cipher = {
                "type": "string",
                "pattern": "^" + TOKEN_RE.pattern + "$",
                "maxLength": cipher_length(spec.get("maxLength", 10**9)),
            }
            # As the decoder: a value in the ciphertext form must be a well-formed one.
            return {"if": {"type": "string", "pattern": "^pii:v1:"}, "then": cipher, "else": out}
        return out

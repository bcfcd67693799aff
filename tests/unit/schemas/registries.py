"""Factories of schema registries in a temporary directory, for evolution tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.constraints import FORMATS, FieldConstraints
from schemas.registry import DEFAULT_ROOT, Registry, compose, fingerprint
from schemas.upcasters import Upcaster


def order_placed(*extra_fields: dict[str, Any], quantity: Any = "int") -> dict[str, Any]:
    """The order.placed payload schema, with changes for an evolution under test."""
    return {
        "type": "record",
        "name": "OrderPlaced",
        "namespace": "eventide.order",
        "fields": [
            {"name": "orderId", "type": "string"},
            {"name": "customerId", "type": "string"},
            {
                "name": "items",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "OrderLine",
                        "fields": [
                            {"name": "sku", "type": "string"},
                            {"name": "quantity", "type": quantity},
                            {"name": "unitPrice", "type": "double"},
                        ],
                    },
                },
            },
            {"name": "totalAmount", "type": "double"},
            {"name": "currency", "type": ["null", "string"], "default": None},
            *extra_fields,
        ],
    }


def write_registry(
    root: Path, schemas: Mapping[tuple[str, str], dict[str, Any]], *, first_id: int = 1
) -> Path:
    """Write ``registry.json`` and ``avsc/`` for ``{(event, "M.m"): payload}`` under ``root``."""
    (root / "avsc").mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_ROOT / "avsc" / "envelope.avsc", root / "avsc" / "envelope.avsc")
    envelope = json.loads((root / "avsc" / "envelope.avsc").read_text())
    rows = []
    for n, ((name, version), payload) in enumerate(schemas.items(), start=first_id):
        path = root / "avsc" / name / f"{version}.avsc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        digest = fingerprint(compose(envelope, payload))
        rows.append({"id": n, "event": name, "version": version, "fingerprint": digest})
    (root / "registry.json").write_text(json.dumps({"schemas": rows}, indent=2))
    return root


def make_registry(
    root: Path,
    schemas: Mapping[tuple[str, str], dict[str, Any]],
    upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
) -> Registry:
    """A loaded (and checked) registry of ``schemas``."""
    write_registry(root, schemas)
    return Registry.load(root, upcasters or {})


def avro_values(schema, primitives, max_array):
    """A hypothesis strategy of valid values of an Avro schema (the subset the
    registry admits), drawing primitives from ``primitives`` (type name → strategy)."""
    from hypothesis import strategies as st

    def values(node):
        if isinstance(node, str):
            return primitives[node]
        if isinstance(node, list):
            return st.one_of(*(values(branch) for branch in node))
        kind = node["type"]
        if kind == "record":
            return st.fixed_dictionaries({f["name"]: field_values(f) for f in node["fields"]})
        if kind == "enum":
            return st.sampled_from(node["symbols"])
        if kind == "array":
            return st.lists(values(node["items"]), max_size=max_array)
        if kind == "map":
            return st.dictionaries(st.text(max_size=5), values(node["values"]), max_size=3)
        return values(kind)

    def field_values(field):
        """Values of a field, within its constraints (schemas/constraints.py) when it has any."""
        constraint = FieldConstraints.of(field, "test")
        if constraint is None:
            return values(field["type"])
        spec = constraint.spec
        if constraint.kind == "array":
            item = field["type"]["items"] if isinstance(field["type"], dict) else None
            return st.lists(
                values(item),
                min_size=spec.get("minItems", 0),
                max_size=min(spec.get("maxItems", max_array), max_array),
            )
        regex = spec.get("pattern") or FORMATS.get(spec.get("format", ""))
        if constraint.kind == "string" and regex:
            plain = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
            base = st.from_regex(regex, fullmatch=True, alphabet=plain)
        elif constraint.kind == "string":
            base = st.text(
                st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
                min_size=spec.get("minLength", 0),
                max_size=min(spec.get("maxLength", 20), 20),
            )
        else:
            base = numbers(field["type"], spec)
        optional = isinstance(field["type"], list) and "null" in field["type"]
        valid = base.filter(lambda v: v is None or constraint.broken(v) is None)
        return st.none() | valid if optional else valid

    def numbers(kind, spec):
        kind = next(k for k in kind if k != "null") if isinstance(kind, list) else kind
        low = spec.get("minimum", spec.get("exclusiveMinimum"))
        high = spec.get("maximum", spec.get("exclusiveMaximum"))
        if kind in ("int", "long"):
            low = None if low is None else int(low) + ("exclusiveMinimum" in spec)
            high = None if high is None else int(high) - ("exclusiveMaximum" in spec)
            return st.integers(min_value=low, max_value=high).filter(lambda v: abs(v) < 2**31)
        return st.floats(
            min_value=low,
            max_value=high,
            exclude_min="exclusiveMinimum" in spec,
            exclude_max="exclusiveMaximum" in spec,
            allow_nan=False,
        )

    return values(schema)

"""Factories of schema registries in a temporary directory, for evolution tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
            return st.fixed_dictionaries({f["name"]: values(f["type"]) for f in node["fields"]})
        if kind == "enum":
            return st.sampled_from(node["symbols"])
        if kind == "array":
            return st.lists(values(node["items"]), max_size=max_array)
        if kind == "map":
            return st.dictionaries(st.text(max_size=5), values(node["values"]), max_size=3)
        return values(kind)

    return values(schema)

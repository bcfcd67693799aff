"""Compatibility of schema versions, by Avro's schema-resolution rules.

A reader schema can read data written with a writer schema when (Avro
specification, "Schema Resolution"):

- both are the same primitive, or the writer's promotes to the reader's
  (int → long, float, double; long → float, double; float → double;
  string ↔ bytes);
- both are records with the same unqualified name (or the reader lists the
  writer's name among its aliases); every reader field is either in the writer
  (by name or alias), with readable types, or has a default; writer fields
  the reader lacks are skipped;
- both are enums with the same name and every writer symbol is a reader
  symbol, or the reader has a default symbol;
- both are arrays (maps) whose items (values) are readable;
- the writer is a union and every branch of it is readable, or the reader is
  a union with a branch that reads the writer's type.

:func:`check_registry` applies this to every pair of consecutive minor
versions of each event, in both directions: the new version reads the old
data (backward) and consumers of the old version read the new data (forward).
Major versions are not compared: they are new schemas, reached by upcasters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .avro_names import (
    NAMED,
    PRIMITIVES,
    Definition,
    Scope,
    collect,
    full_name,
    is_reference,
    namespace_of,
    short_name,
)
from .registry import Registry, SchemaEntry

PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}
"""Writer primitive → the reader primitives that can read it."""


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason a reader schema cannot read a writer schema."""

    path: str
    """Where, e.g. ``data.items[].quantity``."""
    reason: str
    """What breaks, in terms of reader and writer."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class EvolutionProblem:
    """A minor version that breaks one direction of compatibility."""

    old: SchemaEntry
    """The previous minor version."""
    new: SchemaEntry
    """The version that breaks compatibility with it."""
    direction: str
    """``backward`` (new reads old data) or ``forward`` (old reads new data)."""
    problem: Incompatibility
    """The offending field and why."""

    def __str__(self) -> str:
        name, old, new = self.new.name, self.old.version, self.new.version
        if self.direction == "backward":
            who = f"consumers of {new} cannot read {old} data"
        else:
            who = f"consumers of {old} cannot read {new} data"
        return f"{name} {new} is not {self.direction} compatible with {old} ({who}): {self.problem}"


def can_read(reader: Any, writer: Any, path: str = "$") -> list[Incompatibility]:
    """Why ``reader`` cannot read data written with ``writer``; empty when it can."""
    return _Resolver(reader, writer).check(reader, writer, path)


def check_pair(old: SchemaEntry, new: SchemaEntry) -> list[EvolutionProblem]:
    """Both directions of compatibility between two minor versions of one event."""
    problems = [
        EvolutionProblem(old, new, "backward", p)
        for p in can_read(new.payload, old.payload, "data")
    ]
    problems += [
        EvolutionProblem(old, new, "forward", p) for p in can_read(old.payload, new.payload, "data")
    ]
    return problems


def check_registry(registry: Registry) -> tuple[int, list[EvolutionProblem]]:
    """Check every consecutive pair of minor versions; returns (pairs checked, problems)."""
    pairs = 0
    problems: list[EvolutionProblem] = []
    for name in registry.names:
        versions = registry.versions(name)
        for old, new in itertools.pairwise(versions):
            if old.major != new.major:
                continue
            pairs += 1
            problems += check_pair(old, new)
    return pairs, problems


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind if isinstance(kind, str) else _kind(kind)
    return str(schema)


class _Resolver:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader_names = collect(reader)
        self.writer_names = collect(writer)
        self.in_progress: set[tuple[int, int]] = set()

    def resolve(self, schema: Any, names: Scope[Definition] | None, namespace: str) -> Definition:
        """What ``schema`` stands for, wrappers and named references followed, and the
        namespace of what it contains."""
        while True:
            if is_reference(schema) and names is not None:
                found = names.resolve(schema, namespace)
                return found if found is not None else (schema, namespace)
            if isinstance(schema, dict) and (
                isinstance(schema.get("type"), dict | list)
                or (schema.get("type") in PRIMITIVES and "logicalType" not in schema)
            ):
                schema = schema["type"]
            elif isinstance(schema, dict) and schema.get("type") in NAMED:
                return schema, namespace_of(full_name(schema, namespace))
            else:
                return schema, namespace

    def describe(self, schema: Any) -> str:
        kind = _kind(schema)
        if kind in NAMED:
            return f"{kind} {schema.get('name')}"
        if kind == "union":
            return "union [" + ", ".join(self.describe(s) for s in schema) + "]"
        if kind == "array":
            return f"array of {self.describe(self.resolve(schema.get('items'), None, '')[0])}"
        if kind == "map":
            return f"map of {self.describe(self.resolve(schema.get('values'), None, '')[0])}"
        return kind

    def matches(self, reader: Any, writer: Any) -> bool:
        """Avro's shallow match, used to pick a reader union branch."""
        rk, wk = _kind(reader), _kind(writer)
        if wk in PROMOTIONS and rk in PROMOTIONS:
            return rk in PROMOTIONS[wk]
        if rk != wk:
            return False
        if rk in NAMED:
            written = short_name(writer.get("name", ""))
            return short_name(reader.get("name", "")) == written or written in {
                short_name(a) for a in reader.get("aliases", [])
            }
        return True

    def check(
        self, reader: Any, writer: Any, path: str, rns: str = "", wns: str = ""
    ) -> list[Incompatibility]:
        """Why ``reader`` (inside namespace ``rns``) cannot read ``writer`` (inside ``wns``)."""
        reader, rns = self.resolve(reader, self.reader_names, rns)
        writer, wns = self.resolve(writer, self.writer_names, wns)
        key = (id(reader), id(writer))
        if key in self.in_progress:  # a recursive type already being compared
            return []
        rk, wk = _kind(reader), _kind(writer)
        if wk == "union":
            problems = []
            for branch in writer:
                problems += self.check(reader, branch, path, rns, wns)
            return problems
        if rk == "union":
            return self.into_union(reader, writer, path, rns, wns)
        if not self.matches(reader, writer):
            return [Incompatibility(path, self.mismatch(reader, writer))]
        self.in_progress.add(key)
        try:
            if rk == "record":
                return self.record(reader, writer, path, rns, wns)
            if rk == "enum":
                return _enum_problems(reader, writer, path)
            if rk == "fixed" and reader.get("size") != writer.get("size"):
                return [
                    Incompatibility(
                        path, f"fixed size {writer.get('size')} written, {reader.get('size')} read"
                    )
                ]
            if rk == "array":
                return self.check(reader.get("items"), writer.get("items"), path + "[]", rns, wns)
            if rk == "map":
                return self.check(reader.get("values"), writer.get("values"), path + "{}", rns, wns)
            return []
        finally:
            self.in_progress.discard(key)

    def into_union(
        self, reader: list[Any], writer: Any, path: str, rns: str, wns: str
    ) -> list[Incompatibility]:
        """A writer type read by a reader union: the first branch that matches must read it."""
        resolved = [self.resolve(b, self.reader_names, rns) for b in reader]
        for branch, branch_ns in resolved:
            if self.matches(branch, writer):
                return self.check(branch, writer, path, branch_ns, wns)
        return [
            Incompatibility(
                path,
                f"the writer writes {self.describe(writer)}, which no branch of the "
                f"reader's {self.describe([b for b, _ in resolved])} reads",
            )
        ]

    def mismatch(self, reader: Any, writer: Any) -> str:
        """Why two types that do not match cannot be read one as the other."""
        rk, wk = _kind(reader), _kind(writer)
        if rk == wk and rk in NAMED:
            return (
                f"the reader's {self.describe(reader)} and the writer's "
                f"{self.describe(writer)} have different names"
            )
        return (
            f"the reader expects {self.describe(reader)}, the writer writes "
            f"{self.describe(writer)}, which it cannot read"
        )

    def record(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str, rns: str, wns: str
    ) -> list[Incompatibility]:
        written = {f["name"]: f for f in writer.get("fields", [])}
        problems: list[Incompatibility] = []
        for field in reader.get("fields", []):
            where = f"{path}.{field['name']}"
            source = written.get(field["name"])
            if source is None:
                source = next((written[a] for a in field.get("aliases", []) if a in written), None)
            if source is not None:
                problems += self.check(field["type"], source["type"], where, rns, wns)
            elif "default" not in field:
                problems.append(
                    Incompatibility(
                        where,
                        "the reader requires this field, the writer does not write it, "
                        "and it has no default",
                    )
                )
        return problems


def _enum_problems(
    reader: dict[str, Any], writer: dict[str, Any], path: str
) -> list[Incompatibility]:
    missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
    if missing and "default" not in reader:
        return [
            Incompatibility(
                path,
                f"the writer's symbols {', '.join(missing)} are not in the reader's "
                f"enum {reader.get('name')}, which has no default symbol",
            )
        ]
    return []

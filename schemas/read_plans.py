"""Read plans: how the data of one (event, version) is brought into the newest shape.

A plan names the reader schema (the newest minor of the writer's major), the
validator that normalizes data into it, the upcasters to the newest major,
and for Avro the compiled decoder of the writer schema into the reader's.
:class:`ReadPlans` compiles every schema's validators once and makes plans
on first use; the codec keeps them for every later record of that version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from .avro_reader import Read, Unsupported, compile_reader
from .checks import Check, run
from .exceptions import EventError, UnknownSchemaError, UnsupportedVersionError, ValidationError
from .finite import compile_finite_check
from .limits import Limits
from .registry import Registry, SchemaEntry, parse_version
from .upcasters import Upcaster
from .validate import compile_validator

logger = logging.getLogger(__name__)

PLAN_CACHE_LIMIT = 4096
"""Most JSON plans kept: one per distinct (name, version) string pair met."""


@dataclass(frozen=True, slots=True)
class Step:
    """One upcast: the function and the validator of the shape it must produce."""

    upcast: Upcaster
    check: Check
    target: SchemaEntry


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How to bring the data of one (event, version) into the newest shape."""

    reader: SchemaEntry
    """The newest minor of the event's major: the shape data is validated into."""
    check: Check
    """Normalizing validator of :attr:`reader`'s payload."""
    finite: Check | None
    """For Avro: the NaN/infinity check, when the payload has doubles."""
    steps: tuple[Step, ...]
    """Upcasts to the newest major, in order."""
    version: str | None
    """The envelope's version after decoding; None to keep the producer's."""
    written: str = ""
    """For Avro: ``major.minor.0`` of the writer schema, the version most records carry."""
    read: Read | None = None
    """For Avro: the compiled decoder of writer to :attr:`reader`; None to use fastavro."""


class ReadPlans:
    """The validators of every schema of a registry, and the plans made from them."""

    def __init__(self, registry: Registry, limits: Limits) -> None:
        self.registry = registry
        self.strict: dict[int, Check] = {}
        """Schema id → the validator of data to encode (checks, never changes)."""
        self.normalize: dict[int, Check] = {}
        """Schema id → the validator of decoded data (fills in defaults)."""
        self.lenient: dict[int, Check] = {}
        """Schema id → the same, dropping fields of a newer minor."""
        for entry in registry:
            for table, normalize, drop in (
                (self.strict, False, False),
                (self.normalize, True, False),
                (self.lenient, True, True),
            ):
                table[entry.id] = compile_validator(
                    entry.payload,
                    max_string_length=limits.max_string_length,
                    max_array_length=limits.max_array_length,
                    normalize=normalize,
                    drop_unknown=drop,
                )
        self.json: dict[tuple[str, str], ReadPlan] = {}
        """(name, version) of a JSON envelope → its plan."""
        self.avro: dict[int, tuple[SchemaEntry, ReadPlan]] = {}
        """Schema id of an Avro record → the writer schema and its plan."""

    def for_json(self, name: str, version: str) -> ReadPlan:
        """The plan of a JSON envelope's data (kept in :attr:`json`)."""
        parsed = parse_version(version)
        if parsed is None:
            raise ValidationError("version", "a semantic version such as 1.0.0", version[:80])
        major, minor = parsed
        reader = self.reader(name, version, major)
        exact = reader.minor == minor
        table = self.lenient if minor > reader.minor else self.normalize
        plan = self.plan(reader, table[reader.id], keep_version=exact)
        if len(self.json) < PLAN_CACHE_LIMIT:
            self.json[(name, version)] = plan
        return plan

    def for_avro(self, schema_id: int) -> tuple[SchemaEntry, ReadPlan]:
        """The writer schema of an Avro record and the plan of its data (kept in :attr:`avro`)."""
        writer = self.registry.by_id(schema_id)
        reader = self.reader(writer.name, writer.version, writer.major)
        plan = self.plan(reader, self.normalize[reader.id], keep_version=reader is writer)
        try:
            read: Read | None = compile_reader(
                writer.wire, None if reader is writer else reader.wire
            )
        except Unsupported as exc:
            logger.info("%s read as %s with fastavro: %s", writer, reader, exc)
            read = None
        plan = replace(plan, written=f"{writer.version}.0", read=read)
        self.avro[schema_id] = (writer, plan)
        return writer, plan

    def reader(self, name: str, version: str, major: int) -> SchemaEntry:
        """The schema data of ``name`` at ``version`` (of ``major``) is read into."""
        versions = self.registry.versions(name)
        if not versions:
            raise UnknownSchemaError(
                f"name: no schema for event {name[:80]!r} in the registry (schemas/registry.json)"
            )
        reader = self.registry.latest(name, major)
        if reader is None:
            newest = versions[-1]
            if major > newest.major:
                raise UnsupportedVersionError(
                    f"{name} {version}: no reader for major version {major}; this worker reads "
                    f"{name} up to {newest.version}: deploy the newer schemas"
                )
            raise UnsupportedVersionError(
                f"{name} {version}: major version {major} is not in the registry "
                f"(known: {', '.join(v.version for v in versions)})"
            )
        return reader

    def plan(self, reader: SchemaEntry, check: Check, keep_version: bool) -> ReadPlan:
        """The plan of data validated into ``reader`` then upcast to the newest major."""
        steps: list[Step] = []
        current = reader
        newest = self.registry.latest(reader.name)
        assert newest is not None
        while current.major < newest.major:
            upcast = self.registry.upcasters.get((current.name, current.major))
            target = self.registry.latest(current.name, current.major + 1)
            if upcast is None or target is None:
                raise UnsupportedVersionError(
                    f"{current.name} {current.major}.x cannot be read: no upcaster to "
                    f"{current.major + 1}.x in schemas/upcasters.py"
                )
            steps.append(Step(upcast, self.normalize[target.id], target))
            current = target
        final = current
        return ReadPlan(
            reader=reader,
            check=check,
            finite=compile_finite_check(reader.payload),
            steps=tuple(steps),
            version=None if keep_version and not steps else f"{final.major}.{final.minor}.0",
        )


def upcast(step: Step, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` carried to the next major by ``step``, and validated there."""
    try:
        upcast = step.upcast(data)
    except EventError:
        raise
    except Exception as exc:
        raise UnsupportedVersionError(
            f"upcaster to {step.target} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        checked: dict[str, Any] = run(step.check, upcast, "data")
        return checked
    except ValidationError as exc:
        raise ValidationError(
            f"{exc.path} (after upcasting to {step.target.version})", exc.expected, exc.found
        ) from None

"""The local schema registry: stable numeric ids for every (event, version).

``schemas/registry.json`` lists, for each payload schema
``schemas/avsc/<event>/<major>.<minor>.avsc``, its id (the 4-byte id of the
Confluent wire format) and a fingerprint of the schema the id names on the
wire: the envelope of ``schemas/avsc/envelope.avsc`` with that payload as its
``data``. Both files are committed; :meth:`Registry.load` checks them against
each other at start-up and refuses to run when

- an id or an (event, version) appears twice, or a file has no entry;
- a schema is not valid Avro, or uses what the JSON form cannot carry;
- a registered schema changed (published schemas are immutable: add a version);
- a major version after the first has no upcaster in :mod:`schemas.upcasters`.

A version is ``major.minor``: patch releases never change a schema, so an
envelope's ``1.0.3`` is read with schema ``1.0``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro.schema import SchemaParseException, UnknownType

from .exceptions import RegistryError, SchemaError, UnknownSchemaError
from .upcasters import UPCASTERS, Upcaster
from .validate import compile_validator

DEFAULT_ROOT = Path(__file__).resolve().parent
"""The committed registry: ``registry.json`` and ``avsc/`` beside this module."""

REGISTRY_FILE = "registry.json"
ENVELOPE_FILE = "envelope.avsc"
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
SCHEMA_FILE = re.compile(r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.avsc$")
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})(?:\.(0|[1-9][0-9]{0,8}))?$")


def parse_version(text: str) -> tuple[int, int] | None:
    """``"1.2"`` or ``"1.2.3"`` → ``(1, 2)``; None when ``text`` is no such version."""
    match = _VERSION.match(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One registered schema: an event's payload at one version, wrapped in the envelope."""

    id: int
    """Registry id, written after the magic byte of every Avro record."""
    name: str
    """Event name, e.g. ``order.placed``."""
    major: int
    """Major version: a new major is a new schema, reached through an upcaster."""
    minor: int
    """Minor version: adds optional fields only."""
    payload: dict[str, Any]
    """The payload schema as written in its ``.avsc`` file."""
    wire: dict[str, Any]
    """The envelope with :attr:`payload` as ``data``: what the id names on the wire."""
    parsed: Any = field(repr=False)
    """:attr:`wire` parsed by fastavro, ready for its reader and writer."""
    fingerprint: str
    """First 16 hex digits of the SHA-256 of :attr:`wire` (docs left out, keys sorted)."""

    @property
    def version(self) -> str:
        """``major.minor``."""
        return f"{self.major}.{self.minor}"

    @property
    def file(self) -> str:
        """The payload schema's path relative to the registry directory."""
        return f"avsc/{self.name}/{self.version}.avsc"

    def __str__(self) -> str:
        return f"{self.name} {self.version} (id {self.id})"


def fingerprint(schema: Any) -> str:
    """A stable digest of a schema: docs, the ``personal`` mark and ``constraints``
    are ignored (:data:`ANNOTATIONS`), defaults and names count."""
    return hashlib.sha256(
        orjson.dumps(_without_docs(schema), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:16]


class Registry:
    """Schemas by id and by (event, version), loaded and checked from one directory."""

    def __init__(
        self,
        root: Path,
        entries: list[SchemaEntry],
        upcasters: Mapping[tuple[str, int], Upcaster],
        envelope: dict[str, Any],
    ) -> None:
        self.root = root
        """Directory holding ``registry.json`` and ``avsc/``."""
        self.envelope = envelope
        """The envelope schema (its ``data`` type is a placeholder)."""
        self.upcasters = dict(upcasters)
        """(event name, major) → upcaster to the next major."""
        self._by_id = {e.id: e for e in entries}
        self._by_version = {(e.name, e.major, e.minor): e for e in entries}
        self._versions: dict[str, list[SchemaEntry]] = {}
        for e in sorted(entries, key=lambda e: (e.name, e.major, e.minor)):
            self._versions.setdefault(e.name, []).append(e)

    @classmethod
    def load(
        cls,
        root: Path = DEFAULT_ROOT,
        upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS,
    ) -> Registry:
        """Read and check ``root/registry.json`` and ``root/avsc``.

        Raises :class:`RegistryError` listing every problem found.
        """
        problems: list[str] = []
        entries = _load_entries(root, upcasters, problems)
        if problems:
            raise RegistryError(
                f"schema registry {root / REGISTRY_FILE} is inconsistent:\n  - "
                + "\n  - ".join(problems)
            )
        envelope = _read_json(root / "avsc" / ENVELOPE_FILE, [])
        return cls(root, entries, upcasters, envelope)

    def __iter__(self) -> Iterator[SchemaEntry]:
        return iter(sorted(self._by_id.values(), key=lambda e: e.id))

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def names(self) -> list[str]:
        """Every registered event name, sorted."""
        return sorted(self._versions)

    def by_id(self, schema_id: int) -> SchemaEntry:
        """The schema registered under ``schema_id``; :class:`UnknownSchemaError` if none."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(
                f"schema id {schema_id} is not in the registry ({len(self)} schemas, ids "
                f"{min(self._by_id, default=0)}..{max(self._by_id, default=0)}); "
                "the producer uses a schema this worker does not know: deploy the newer registry"
            ) from None

    def get(self, name: str, version: str) -> SchemaEntry:
        """The schema of ``name`` at ``version`` (``1.0`` or ``1.0.3``)."""
        parsed = parse_version(version)
        entry = self._by_version.get((name, *parsed)) if parsed else None
        if entry is None:
            known = ", ".join(e.version for e in self.versions(name)) or "none"
            raise UnknownSchemaError(
                f"no schema for {name} {version} in the registry (known versions: {known})"
            )
        return entry

    def versions(self, name: str) -> list[SchemaEntry]:
        """The schemas of ``name``, oldest first; empty when the name is unknown."""
        return list(self._versions.get(name, ()))

    def latest(self, name: str, major: int | None = None) -> SchemaEntry | None:
        """The newest schema of ``name`` (within ``major`` when given)."""
        versions = self._versions.get(name, ())
        if major is not None:
            versions = [e for e in versions if e.major == major]
        return versions[-1] if versions else None


def compose(envelope: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The wire schema: the envelope record with ``payload`` as the type of ``data``."""
    fields = [{**f, "type": payload} if f.get("name") == "data" else f for f in envelope["fields"]]
    return {**envelope, "fields": fields}


def registry_line(schema_id: int, name: str, version: str, digest: str) -> str:
    """The ``registry.json`` entry for a schema, as a user should paste it."""
    return orjson.dumps(
        {"id": schema_id, "event": name, "version": version, "fingerprint": digest}
    ).decode()


def _load_entries(
    root: Path, upcasters: Mapping[tuple[str, int], Upcaster], problems: list[str]
) -> list[SchemaEntry]:
    sources = _read_sources(root, problems)
    if sources is None:
        return []
    rows, envelope = sources
    entries: list[SchemaEntry] = []
    seen = _Seen()
    for n, row in enumerate(rows):
        entry = _entry_of(root, envelope, f"{REGISTRY_FILE} entry {n}", row, seen, problems)
        if entry is not None:
            entries.append(entry)
    _unregistered_files(root, envelope, seen, problems)
    _check_majors(entries, upcasters, problems)
    return entries


def _read_sources(root: Path, problems: list[str]) -> tuple[list[Any], dict[str, Any]] | None:
    """The rows of ``registry.json`` and the envelope schema; None after a problem."""
    doc = _read_json(root / REGISTRY_FILE, problems)
    envelope = _read_json(root / "avsc" / ENVELOPE_FILE, problems)
    if problems:
        return None
    rows = doc.get("schemas") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        problems.append(f'{REGISTRY_FILE}: expected {{"schemas": [...]}}')
        return None
    if not (
        isinstance(envelope, dict)
        and any(f.get("name") == "data" for f in envelope.get("fields", []))
    ):
        problems.append(f"avsc/{ENVELOPE_FILE}: expected a record with a field named data")
        return None
    return rows, envelope


@dataclass
class _Seen:
    """What the rows of ``registry.json`` read so far have claimed."""

    ids: dict[int, str] = field(default_factory=dict)
    versions: set[tuple[str, int, int]] = field(default_factory=set)
    files: set[str] = field(default_factory=set)


def _row_key(where: str, row: Any, problems: list[str]) -> tuple[int, str, str, int, int] | None:
    """A row's id, event, version and its major and minor; None after a problem."""
    if not isinstance(row, dict):
        problems.append(f"{where}: expected an object, got {row!r}")
        return None
    schema_id, name, version = row.get("id"), row.get("event"), row.get("version")
    if type(schema_id) is not int or not 0 < schema_id < 2**31:
        problems.append(f"{where}: id must be an integer 1..2147483647, got {schema_id!r}")
        return None
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        problems.append(f"{where} (id {schema_id}): event must be <entity>.<action>, got {name!r}")
        return None
    if not isinstance(version, str) or version.count(".") != 1:
        version = None
    parsed_version = parse_version(version) if version else None
    if version is None or parsed_version is None:
        problems.append(f"{where} (id {schema_id}): version must be major.minor, got {version!r}")
        return None
    return schema_id, name, version, *parsed_version


def _entry_of(
    root: Path,
    envelope: dict[str, Any],
    where: str,
    row: Any,
    seen: _Seen,
    problems: list[str],
) -> SchemaEntry | None:
    """The entry of one row of ``registry.json``; None after a problem."""
    key = _row_key(where, row, problems)
    if key is None:
        return None
    schema_id, name, version, major, minor = key
    label = f"{name} {version} (id {schema_id})"
    if schema_id in seen.ids:
        problems.append(f"{label}: id {schema_id} is already used by {seen.ids[schema_id]}")
        return None
    if (name, major, minor) in seen.versions:
        problems.append(f"{label}: {name} {version} is registered twice")
        return None
    seen.ids[schema_id] = f"{name} {version}"
    seen.versions.add((name, major, minor))
    relative = f"avsc/{name}/{major}.{minor}.avsc"
    seen.files.add(relative)
    payload = _read_json(root / relative, problems)
    if not isinstance(payload, dict) or payload.get("type") != "record":
        if payload is not None:
            problems.append(f"{relative}: a payload schema must be a record")
        return None
    wire = compose(envelope, payload)
    try:
        parsed = parse_schema(wire)
        compile_validator(wire, max_string_length=2**31, max_array_length=2**31, normalize=False)
    except (SchemaParseException, UnknownType, SchemaError, ValueError, TypeError, KeyError) as exc:
        problems.append(f"{relative}: not a usable Avro schema: {exc}")
        return None
    digest = fingerprint(wire)
    if row.get("fingerprint") != digest:
        problems.append(
            f"{label}: {relative} differs from the schema registered under id {schema_id} "
            f"(fingerprint {row.get('fingerprint')!r}, now {digest!r}); published schemas "
            "are immutable: restore it and add a new version instead"
            if row.get("fingerprint")
            else f"{label}: no fingerprint; set it: "
            + registry_line(schema_id, name, version, digest)
        )
        return None
    return SchemaEntry(schema_id, name, major, minor, payload, wire, parsed, digest)


def _unregistered_files(
    root: Path, envelope: dict[str, Any], seen: _Seen, problems: list[str]
) -> None:
    """A problem, with the line to add, for every schema file ``registry.json`` lacks."""
    next_id = max(seen.ids, default=0) + 1
    for path in sorted((root / "avsc").glob("*/*.avsc")):
        relative = path.relative_to(root).as_posix()
        name = path.parent.name
        match = SCHEMA_FILE.match(path.name)
        if relative in seen.files:
            continue
        if match is None or not EVENT_NAME.match(name):
            problems.append(
                f"{relative}: schema files are avsc/<entity>.<action>/<major>.<minor>.avsc"
            )
            continue
        payload = _read_json(path, problems)
        if isinstance(payload, dict):
            version = f"{int(match.group(1))}.{int(match.group(2))}"
            line = registry_line(next_id, name, version, fingerprint(compose(envelope, payload)))
            problems.append(f"{relative} is not registered; add to {REGISTRY_FILE}: {line}")
            next_id += 1


def _check_majors(
    entries: list[SchemaEntry], upcasters: Mapping[tuple[str, int], Upcaster], problems: list[str]
) -> None:
    """Majors follow each other without a gap, and an upcaster joins each to the next."""
    by_name: dict[str, set[int]] = {}
    for e in entries:
        by_name.setdefault(e.name, set()).add(e.major)
    for name, majors in sorted(by_name.items()):
        ordered = sorted(majors)
        for previous, major in itertools.pairwise(ordered):
            if major != previous + 1:
                problems.append(f"{name}: major versions {previous} and {major} leave a gap")
            elif (name, previous) not in upcasters:
                problems.append(
                    f"{name} {major}.x is a new major version but no upcaster reads {name} "
                    f"{previous}.x: add ({name!r}, {previous}) to UPCASTERS in schemas/upcasters.py"
                )
    for name, major in sorted(upcasters):
        if major + 1 not in by_name.get(name, set()):
            problems.append(
                f"upcaster ({name!r}, {major}) in schemas/upcasters.py has no {name} "
                f"{major + 1}.x schema to upcast to"
            )


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        problems.append(f"{path.name}: file {path} is missing")
    except orjson.JSONDecodeError as exc:
        problems.append(f"{path}: not valid JSON: {exc}")
    return None


ANNOTATIONS = frozenset({"doc", "personal", "constraints"})
"""Schema attributes that do not change the encoding: left out of fingerprints
(``personal`` marks a field written encrypted, see schemas/personal.py;
``constraints`` are the value rules of schemas/constraints.py, which the
validators enforce: adding them keeps the schema's id)."""


def _without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_docs(v) for k, v in schema.items() if k not in ANNOTATIONS}
    if isinstance(schema, list):
        return [_without_docs(v) for v in schema]
    return schema

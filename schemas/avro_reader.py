"""Avro binary decoders compiled once per (writer, reader) schema pair into closures.

:func:`compile_reader` walks the schemas once and returns a function
``read(buf, pos) -> (value, pos)`` over the raw bytes; :func:`read_value`
runs one and turns every failure into :class:`MalformedAvro`. The result is
what ``fastavro.schemaless_reader(fo, writer, reader)`` returns for the same
bytes (records as dicts in writer field order, reader-only fields appended with
their defaults), several times faster: a record's common fields (string, int,
long, double, optional string) are decoded inline in one loop, without a call
per field, and nothing re-reads the schema.

Hostile input is refused, never trusted:

- a length or block count is checked against the bytes left before anything
  is allocated (array and map items take at least one byte each: the registry
  refuses item types that take none), negative lengths are refused;
- varints longer than 10 bytes, longs outside 64 bits, ints outside 32 bits,
  booleans other than 0 and 1, and union or enum indexes out of range are
  refused (fastavro accepts some of these and reads garbage);
- a read past the end fails, or leaves the position past the end, which
  :func:`read_value` reports as truncated data; trailing bytes are the
  caller's to report (:func:`read_value` returns the end position).

The primitive encodings are read by :mod:`schemas.avro_binary`; named types
are resolved by :mod:`schemas.avro_names`. Schemas are the subset the
registry admits (:mod:`schemas.validate`). :func:`compile_reader` raises
:class:`Unsupported` for what it does not handle, such as recursive types,
aliases or renamed records, so that the caller can fall back to fastavro for
those pairs.
"""

from __future__ import annotations

import copy
import struct
from typing import Any

from .avro_binary import (
    MIN_SIZES,
    PRIMITIVE_READERS,
    PROMOTIONS,
    UNPACK_DOUBLE,
    MalformedAvro,
    Read,
    read_int,
    read_long,
    read_string,
)
from .avro_names import (
    NAMED,
    PRIMITIVES,
    Definition,
    Scope,
    full_name,
    is_reference,
    namespace_of,
    short_name,
)

# Field kinds a record decodes inline (anything else calls the field's own decoder).
_STRING, _LONG, _INT, _DOUBLE, _OPT_STRING, _OTHER = range(6)


class Unsupported(Exception):
    """The schema pair needs a feature this module does not compile; use fastavro."""


def read_value(read: Read, buf: bytes, pos: int) -> tuple[Any, int]:
    """Run ``read`` on ``buf`` from ``pos``: the value and the end position.

    Raises :class:`MalformedAvro` for any malformed or truncated data.
    """
    try:
        value, end = read(buf, pos)
    except MalformedAvro:
        raise
    except (IndexError, struct.error):
        raise MalformedAvro("the data ends inside a value (truncated)") from None
    except UnicodeDecodeError as exc:
        raise MalformedAvro(f"a string is not valid UTF-8: {exc}") from None
    if end > len(buf):
        raise MalformedAvro(
            f"the data ends inside a value (truncated): {end - len(buf)} more bytes expected"
        )
    return value, end


def compile_reader(writer: Any, reader: Any | None = None) -> Read:
    """The decoder of data written with ``writer`` into the shape of ``reader``.

    Both are schemas in their JSON form (as in ``.avsc`` files); ``reader`` None
    or equal to ``writer`` means no resolution. Raises :class:`Unsupported`.
    """
    if reader is None or reader == writer:
        return _Compiler().compile(writer, None, "")
    return _Compiler().compile(writer, reader, "")


class _Compiler:
    """One compilation: named types of the writer (and reader) resolved as they appear."""

    def __init__(self) -> None:
        self.named: tuple[Scope[Definition], Scope[Definition]] = (Scope(), Scope())
        """Full name → (definition, its namespace), of the writer and of the reader."""
        self.compiling: set[str] = set()

    def deref(self, schema: Any, namespace: str, side: int = 0) -> tuple[Any, str]:
        """The definition of a named reference, or ``schema`` itself (defining its name)."""
        named = self.named[side]
        if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            schema = schema["type"]  # {"type": {...}} wrappers
        if isinstance(schema, dict) and "logicalType" in schema:
            raise Unsupported(f"logical type {schema['logicalType']!r}")
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
            schema = schema["type"]
        if is_reference(schema):
            found = named.resolve(schema, namespace)
            if found is None:
                raise Unsupported(f"unknown type {schema!r}")
            return found
        if isinstance(schema, dict) and schema.get("type") in NAMED:
            full = full_name(schema, namespace)
            named.define_once(full, (schema, namespace_of(full)))
        return schema, namespace

    def compile(self, writer: Any, reader: Any | None, namespace: str, rns: str = "") -> Read:
        """``reader`` None: decode ``writer`` as is; else resolve into ``reader``."""
        writer, namespace = self.deref(writer, namespace)
        if reader is not None:
            reader, rns = self.deref(reader, rns, 1)
        if isinstance(writer, list):
            return self.union(writer, reader, namespace, rns)
        if isinstance(reader, list):
            return self.into_union(writer, reader, namespace, rns)
        wkind = writer if isinstance(writer, str) else writer.get("type")
        rkind = wkind if reader is None else reader if isinstance(reader, str) else reader["type"]
        if wkind in PRIMITIVES:
            return self.primitive(wkind, rkind)
        if rkind != wkind:
            raise Unsupported(f"{wkind} read as {rkind}")
        if (
            reader is not None
            and wkind in ("record", "enum")
            and short_name(writer.get("name", "")) != short_name(reader.get("name", ""))
        ):
            raise Unsupported(f"{wkind} {writer.get('name')} read as {reader.get('name')}")
        if wkind == "record":
            full = full_name(writer, namespace)
            if full in self.compiling:
                raise Unsupported(f"recursive type {full}")
            self.compiling.add(full)
            try:
                return self.record(writer, reader, namespace_of(full), rns)
            finally:
                self.compiling.discard(full)
        if wkind == "enum":
            return self.enum(writer, reader)
        if wkind == "array":
            item = self.compile(
                writer["items"], None if reader is None else reader["items"], namespace, rns
            )
            size = self.min_size(writer["items"], namespace)
            if size < 1:
                raise Unsupported(f"array of {writer['items']!r}, whose items take no bytes")
            return self.blocks(item, None, size)
        if wkind == "map":
            value = self.compile(
                writer["values"], None if reader is None else reader["values"], namespace, rns
            )
            return self.blocks(None, value, 1 + self.min_size(writer["values"], namespace))
        raise Unsupported(f"type {wkind!r}")

    def primitive(self, wkind: str, rkind: str) -> Read:
        if rkind == wkind:
            read = PRIMITIVE_READERS.get(wkind)
            if read is None:
                raise Unsupported(f"type {wkind!r}")
            return read
        promote = PROMOTIONS.get((wkind, rkind))
        if promote is None:
            raise Unsupported(f"{wkind} read as {rkind}")
        return promote

    def union(self, writer: list[Any], reader: Any | None, namespace: str, rns: str) -> Read:
        branches: list[Read] = []
        for branch in writer:
            if reader is None:
                branches.append(self.compile(branch, None, namespace))
            elif isinstance(reader, list):
                branches.append(self.into_union(branch, reader, namespace, rns))
            else:
                try:
                    branches.append(self.compile(branch, reader, namespace, rns))
                except Unsupported:
                    branches.append(_unreadable(branch, reader))
        if writer in (["null", "string"], ["string", "null"]) and (
            reader is None or reader == writer
        ):
            return _optional_string(writer.index("null"))
        count = len(branches)

        def read_union(buf: bytes, pos: int) -> tuple[Any, int]:
            b = buf[pos]
            if b < 0x80:
                index = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                index, pos = read_long(buf, pos)
            if not 0 <= index < count:
                raise MalformedAvro(f"union index {index} out of range 0..{count - 1}")
            return branches[index](buf, pos)

        return read_union

    def into_union(self, writer: Any, reader: list[Any], namespace: str, rns: str) -> Read:
        """A non-union writer read by a union: the first reader branch that reads it."""
        wkind = writer if isinstance(writer, str) else writer.get("type")
        for branch in reader:  # the first that reads it, in the reader's order (as fastavro)
            try:
                return self.compile(writer, branch, namespace, rns)
            except Unsupported:
                continue
        raise Unsupported(f"no branch of {reader!r} reads {wkind}")

    def record(self, writer: dict[str, Any], reader: Any | None, ns: str, rns: str) -> Read:
        if reader is not None:
            rns = namespace_of(full_name(reader, rns))
            reader_fields = {f["name"]: f for f in reader.get("fields", [])}
            if any(f.get("aliases") for f in reader.get("fields", [])):
                raise Unsupported("field aliases")
        fields: list[tuple[str | None, int, Read]] = []
        for f in writer.get("fields", []):
            if reader is None:
                target = None
                kind = _inline_kind(f["type"])
            else:
                rf = reader_fields.get(f["name"])
                target = None if rf is None else rf["type"]
                kind = _inline_kind(f["type"]) if f["type"] == target else _OTHER
            read = self.compile(f["type"], target, ns, rns)
            # A field the reader lacks is read and dropped (name None).
            name = f["name"] if reader is None or f["name"] in reader_fields else None
            fields.append((name, kind if name is not None else _OTHER, read))
        written = {f["name"] for f in writer.get("fields", [])}
        defaults: list[tuple[str, Any]] = []
        if reader is not None:
            for name, rf in reader_fields.items():
                if name not in written:
                    if "default" not in rf:
                        raise Unsupported(f"reader field {name!r} has no default")
                    defaults.append((name, rf["default"]))
        dropped = any(name is None for name, _, _ in fields)
        return _record_reader(tuple(fields), tuple(defaults), dropped)

    def enum(self, writer: dict[str, Any], reader: Any | None) -> Read:
        symbols: list[str] = list(writer.get("symbols", []))
        if reader is not None and reader.get("symbols") != symbols:
            known = set(reader.get("symbols", []))
            default = reader.get("default")
            if not set(symbols) <= known and default is None:
                raise Unsupported("enum symbols the reader lacks and no default")
            symbols = [s if s in known else default for s in symbols]
        count = len(symbols)

        def read_enum(buf: bytes, pos: int) -> tuple[Any, int]:
            b = buf[pos]
            if b < 0x80:
                index = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                index, pos = read_long(buf, pos)
            if not 0 <= index < count:
                raise MalformedAvro(f"enum index {index} out of range 0..{count - 1}")
            return symbols[index], pos

        return read_enum

    def min_size(self, schema: Any, namespace: str) -> int:
        """The fewest bytes a value of ``schema`` (writer side, not recursive) takes."""
        schema, namespace = self.deref(schema, namespace)
        if isinstance(schema, list):
            return 1
        kind = schema if isinstance(schema, str) else schema.get("type")
        if kind == "record":
            ns = namespace_of(full_name(schema, namespace))
            return sum(self.min_size(f["type"], ns) for f in schema.get("fields", []))
        if kind == "fixed":
            return int(schema.get("size", 0))
        return MIN_SIZES.get(kind, 1)

    def blocks(self, item: Read | None, value: Read | None, item_size: int) -> Read:
        """An array (``item``) or a map (``value``): blocks of items until a zero count.

        Each item takes at least ``item_size`` bytes (1 or more).
        """

        def read_blocks(buf: bytes, pos: int) -> tuple[Any, int]:
            out: Any = [] if item is not None else {}
            while True:
                b = buf[pos]
                if b < 0x80:
                    count = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    count, pos = read_long(buf, pos)
                if count == 0:
                    return out, pos
                if count < 0:  # a negative count is followed by the block's size in bytes
                    count = -count
                    _, pos = read_long(buf, pos)
                # Refuse counts the bytes left cannot hold, before allocating anything.
                if count * item_size > len(buf) - pos:
                    raise MalformedAvro(
                        f"a block claims {count} items of at least {item_size} bytes but only "
                        f"{max(len(buf) - pos, 0)} bytes are left"
                    )
                if item is not None:
                    append = out.append
                    for _ in range(count):
                        element, pos = item(buf, pos)
                        append(element)
                else:
                    assert value is not None
                    for _ in range(count):
                        key, pos = read_string(buf, pos)
                        out[key], pos = value(buf, pos)

        return read_blocks


def _inline_kind(schema: Any) -> int:
    if schema == "string":
        return _STRING
    if schema == "long":
        return _LONG
    if schema == "int":
        return _INT
    if schema == "double":
        return _DOUBLE
    if schema == ["null", "string"]:
        return _OPT_STRING
    return _OTHER


def _record_reader(
    fields: tuple[tuple[str | None, int, Read], ...],
    defaults: tuple[tuple[str, Any], ...],
    dropped: bool,
) -> Read:
    """The decoder of a record: its fields in writer order, then the reader's defaults.

    The decoder is generated as straight-line Python for the record's fields
    (one block per field, the common kinds decoded inline) and compiled once:
    no loop over the fields, no call per inline field, and the record built as
    one dict display at the end. ``dropped`` fields (name None) are read and
    not kept.
    """
    del dropped  # dropped fields are simply not put in the dict display
    env: dict[str, Any] = {
        "read_string": read_string,
        "read_long": read_long,
        "read_int": read_int,
        "unpack_double": UNPACK_DOUBLE,
        "MalformedAvro": MalformedAvro,
        "deepcopy": copy.deepcopy,
    }
    lines = ["def read_record(buf, pos):"]
    items: list[str] = []
    for i, (name, kind, read) in enumerate(fields):
        env[f"r{i}"] = read
        lines += [f"    {line}" for line in _field_source(i, kind)]
        if name is not None:
            env[f"k{i}"] = name
            items.append(f"k{i}: v{i}")
    for j, (name, default) in enumerate(defaults):
        env[f"dk{j}"], env[f"d{j}"] = name, default
        mutable = type(default) in (list, dict)
        items.append(f"dk{j}: deepcopy(d{j})" if mutable else f"dk{j}: d{j}")
    lines.append(f"    return {{{', '.join(items)}}}, pos")
    exec(compile("\n".join(lines), "<avro record reader>", "exec"), env)
    return env["read_record"]


def _field_source(i: int, kind: int) -> list[str]:
    """The lines that read field ``i`` of ``kind`` into ``v{i}`` and advance ``pos``."""
    if kind == _STRING:
        return [
            "b = buf[pos]",
            "if b & 0x81:  # a length of 64 or more, or negative",
            f"    v{i}, pos = read_string(buf, pos)",
            "else:",
            "    s = pos + 1",
            "    pos = s + (b >> 1)",
            f"    v{i} = buf[s:pos].decode()",
        ]
    if kind in (_LONG, _INT):
        read = "read_long" if kind == _LONG else "read_int"
        return [
            "b = buf[pos]",
            "if b < 0x80:",
            f"    v{i} = (b >> 1) ^ -(b & 1)",
            "    pos += 1",
            "else:",
            f"    v{i}, pos = {read}(buf, pos)",
        ]
    if kind == _DOUBLE:
        return [f"v{i} = unpack_double(buf, pos)[0]", "pos += 8"]
    if kind == _OPT_STRING:
        return [
            "b = buf[pos]",
            "if b == 0:",
            f"    v{i} = None",
            "    pos += 1",
            "elif b == 2:",
            "    b = buf[pos + 1]",
            "    if b & 0x81:",
            f"        v{i}, pos = read_string(buf, pos + 1)",
            "    else:",
            "        s = pos + 2",
            "        pos = s + (b >> 1)",
            f"        v{i} = buf[s:pos].decode()",
            "else:",
            '    raise MalformedAvro(f"union index {(b >> 1) ^ -(b & 1)} out of range 0..1")',
        ]
    return [f"v{i}, pos = r{i}(buf, pos)"]


def _optional_string(null_index: int) -> Read:
    null_byte, string_byte = (0, 2) if null_index == 0 else (2, 0)

    def read_optional_string(buf: bytes, pos: int) -> tuple[Any, int]:
        b = buf[pos]
        if b == null_byte:
            return None, pos + 1
        if b == string_byte:
            return read_string(buf, pos + 1)
        raise MalformedAvro(f"union index {(b >> 1) ^ -(b & 1)} out of range 0..1")

    return read_optional_string


def _unreadable(writer: Any, reader: Any) -> Read:
    """A writer union branch the reader cannot read: an error only if the data uses it."""

    def read_unreadable(buf: bytes, pos: int) -> tuple[Any, int]:
        raise MalformedAvro(f"the data holds a {writer!r}, which the reader's {reader!r} cannot")

    return read_unreadable

"""Avro binary primitives: varints, strings and the other fixed encodings, read from bytes.

Each reader takes the whole record ``buf`` and a position and returns the
value and the position after it; the decoders that
:mod:`schemas.avro_reader` compiles for records, unions, arrays and maps are
built from these. Hostile input is refused where it would be misread
(varints over 10 bytes or 64 bits, ints over 32 bits, booleans other than 0
and 1, negative lengths); a read past the end either fails or leaves the
position past the end, which :func:`schemas.avro_reader.read_value` reports.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Read = Callable[[bytes, int], tuple[Any, int]]
"""A compiled decoder: the value starting at ``pos`` in ``buf`` and the position after it."""

_INT_LOW, _INT_HIGH = -(2**31), 2**31 - 1
UNPACK_DOUBLE = struct.Struct("<d").unpack_from
"""``UNPACK_DOUBLE(buf, pos)[0]``: the little-endian double at ``pos``."""
_UNPACK_FLOAT = struct.Struct("<f").unpack_from


class MalformedAvro(ValueError):
    """The bytes are not a value of the writer schema; the message says what is wrong."""


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` and the position after it; at most 10 bytes, 64 bits."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise MalformedAvro("a varint is longer than the 10 bytes of a long")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise MalformedAvro("a varint does not fit in a 64-bit long")
    return (n >> 1) ^ -(n & 1), pos


def read_int(buf: bytes, pos: int) -> tuple[int, int]:
    """Like :func:`read_long`, refusing values outside 32 bits."""
    n, pos = read_long(buf, pos)
    if not _INT_LOW <= n <= _INT_HIGH:
        raise MalformedAvro(f"int {n} does not fit in 32 bits")
    return n, pos


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 string (the end may lie past the data: see the module doc)."""
    b = buf[pos]
    if b < 0x80:
        if b & 1:
            raise MalformedAvro(f"negative string length {-(b >> 1) - 1}")
        end = pos + 1 + (b >> 1)
        return buf[pos + 1 : end].decode(), end
    n, pos = read_long(buf, pos)
    if n < 0:
        raise MalformedAvro(f"negative string length {n}")
    end = pos + n
    return buf[pos:end].decode(), end


def _read_null(buf: bytes, pos: int) -> tuple[Any, int]:
    return None, pos


def _read_boolean(buf: bytes, pos: int) -> tuple[Any, int]:
    b = buf[pos]
    if b > 1:
        raise MalformedAvro(f"boolean byte {b} is neither 0 nor 1")
    return b == 1, pos + 1


def _read_double(buf: bytes, pos: int) -> tuple[Any, int]:
    return UNPACK_DOUBLE(buf, pos)[0], pos + 8


def _read_float(buf: bytes, pos: int) -> tuple[Any, int]:
    return _UNPACK_FLOAT(buf, pos)[0], pos + 4


def _float_of(read: Read) -> Read:
    def read_as_float(buf: bytes, pos: int) -> tuple[Any, int]:
        value, pos = read(buf, pos)
        return float(value), pos

    return read_as_float


MIN_SIZES = {"null": 0, "float": 4, "double": 8}
"""Bytes a value of a primitive type takes at least, when not 1."""
PRIMITIVE_READERS: dict[str, Read] = {
    "null": _read_null,
    "boolean": _read_boolean,
    "int": read_int,
    "long": read_long,
    "float": _read_float,
    "double": _read_double,
    "string": read_string,
}
"""The decoder of each primitive type (bytes: not admitted by the registry)."""
PROMOTIONS: dict[tuple[str, str], Read] = {
    ("int", "long"): read_int,
    ("int", "float"): _float_of(read_int),
    ("int", "double"): _float_of(read_int),
    ("long", "float"): _float_of(read_long),
    ("long", "double"): _float_of(read_long),
    ("float", "double"): _read_float,
}
"""(writer type, reader type) → the decoder of a promotion Avro allows."""
